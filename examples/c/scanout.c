/*
 * Allocates a scanout buffer through dmaplaced and, given a DRM card, imports it
 * into KMS with ADDFB2: what a compositor does with a buffer it shares with a GPU,
 * a camera or a decoder in other processes.
 *
 *   scanout SOCKET DEVICE [WIDTHxHEIGHT] [/dev/dri/cardN]
 *
 * SOCKET "-" means the default ($DMAPLACE_SOCKET, else $XDG_RUNTIME_DIR/dmaplace.sock);
 * DEVICE is the daemon platform's name for the display. Prints the committed layout and,
 * with a card, the framebuffer id ADDFB2 returned. Exit status 0 only if every step
 * worked. Build: cc scanout.c $(pkg-config --cflags --libs dmaplace)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <dmaplace.h>

/* The DRM uapi this example needs (include/uapi/drm/drm.h, drm_mode.h), spelled out so
 * that it builds without libdrm's headers. */
struct prime_handle { uint32_t handle; uint32_t flags; int32_t fd; };
struct gem_close { uint32_t handle; uint32_t pad; };
struct mode_fb_cmd2 {
	uint32_t fb_id, width, height, pixel_format, flags;
	uint32_t handles[4], pitches[4], offsets[4];
	uint64_t modifier[4];
};
#define DRM_BASE 'd'
#define DRM_IOCTL_GEM_CLOSE _IOW(DRM_BASE, 0x09, struct gem_close)
#define DRM_IOCTL_PRIME_FD_TO_HANDLE _IOWR(DRM_BASE, 0x2e, struct prime_handle)
#define DRM_IOCTL_MODE_RMFB _IOWR(DRM_BASE, 0xAF, unsigned int)
#define DRM_IOCTL_MODE_ADDFB2 _IOWR(DRM_BASE, 0xB8, struct mode_fb_cmd2)
#define DRM_MODE_FB_MODIFIERS (1 << 1)
#define FOURCC(a, b, c, d) ((uint32_t)(a) | ((uint32_t)(b) << 8) | ((uint32_t)(c) << 16) | ((uint32_t)(d) << 24))

static int fail(const char *what, int status)
{
	fprintf(stderr, "scanout: %s failed (status %d): %s\n", what, status, dmaplace_last_error());
	return 1;
}

static int addfb2(const char *card, int buf_fd, const dmaplace_layout *l)
{
	int drm = open(card, O_RDWR | O_CLOEXEC);
	if (drm < 0) {
		fprintf(stderr, "scanout: open %s: %s\n", card, strerror(errno));
		return 1;
	}
	struct prime_handle ph = { .fd = buf_fd };
	if (ioctl(drm, DRM_IOCTL_PRIME_FD_TO_HANDLE, &ph) < 0) {
		fprintf(stderr, "scanout: PRIME_FD_TO_HANDLE on %s: %s\n", card, strerror(errno));
		close(drm);
		return 1;
	}
	struct mode_fb_cmd2 fb = { .width = l->width, .height = l->height, .pixel_format = l->fourcc };
	for (uint32_t i = 0; i < l->num_planes; i++) {
		fb.handles[i] = ph.handle;
		fb.pitches[i] = l->pitches[i];
		fb.offsets[i] = l->offsets[i];
		fb.modifier[i] = l->modifier;
	}
	if (l->modifier != 0)
		fb.flags = DRM_MODE_FB_MODIFIERS;
	int rc = 0;
	if (ioctl(drm, DRM_IOCTL_MODE_ADDFB2, &fb) < 0) {
		fprintf(stderr, "scanout: ADDFB2 on %s: %s\n", card, strerror(errno));
		rc = 1;
	} else {
		printf("ADDFB2 %s: framebuffer %u\n", card, fb.fb_id);
		ioctl(drm, DRM_IOCTL_MODE_RMFB, &fb.fb_id);
	}
	struct gem_close gc = { .handle = ph.handle };
	ioctl(drm, DRM_IOCTL_GEM_CLOSE, &gc);
	close(drm);
	return rc;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s SOCKET DEVICE [WIDTHxHEIGHT] [/dev/dri/cardN]\n", argv[0]);
		return 2;
	}
	const char *socket = strcmp(argv[1], "-") == 0 ? NULL : argv[1];
	unsigned width = 1024, height = 768;
	if (argc > 3 && sscanf(argv[3], "%ux%u", &width, &height) != 2) {
		fprintf(stderr, "scanout: %s is not WIDTHxHEIGHT\n", argv[3]);
		return 2;
	}
	dmaplace_client *c = NULL;
	int s = dmaplace_connect(socket, "scanout-example", &c);
	if (s != DMAPLACE_OK)
		return fail("dmaplace_connect", s);
	uint32_t buffer, attachment, abuf, mapping;
	uint8_t token[DMAPLACE_TOKEN_LEN];
	s = dmaplace_create_image(c, width, height, FOURCC('X', 'R', '2', '4'), "scanout", &buffer, &token);
	if (s != DMAPLACE_OK)
		return fail("dmaplace_create_image", s);
	s = dmaplace_attach(c, &token, argv[2], DMAPLACE_HINT_SCANOUT, &attachment, &abuf);
	if (s != DMAPLACE_OK)
		return fail("dmaplace_attach", s);
	dmaplace_layout layout;
	int fd = -1;
	s = dmaplace_map(c, attachment, &mapping, &layout, &fd);
	if (s != DMAPLACE_OK)
		return fail("dmaplace_map", s);
	printf("layout: %ux%u fourcc %.4s modifier 0x%llx size %llu planes %u pitch %u offset %u fd %d\n", layout.width,
	       layout.height, (const char *)&layout.fourcc, (unsigned long long)layout.modifier,
	       (unsigned long long)layout.size, layout.num_planes, layout.pitches[0], layout.offsets[0], fd);
	/* Paint it: the CPU writes the whole buffer once. */
	void *p = mmap(NULL, layout.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		fprintf(stderr, "scanout: mmap: %s\n", strerror(errno));
		return 1;
	}
	memset(p, 0x80, layout.size);
	munmap(p, layout.size);
	int rc = 0;
	if (argc > 4)
		rc = addfb2(argv[4], fd, &layout);
	close(fd);
	s = dmaplace_unmap(c, mapping);
	if (s == DMAPLACE_OK)
		s = dmaplace_release(c, buffer);
	if (s != DMAPLACE_OK)
		return fail("dmaplace_unmap/release", s);
	/* Errors are codes plus a message: a device the platform does not have. */
	s = dmaplace_attach(c, &token, "no-such-device", 0, &attachment, &abuf);
	printf("attach after release: status %d: %s\n", s, dmaplace_last_error());
	dmaplace_client_free(c);
	if (s != DMAPLACE_ERR_BAD_TOKEN) {
		fprintf(stderr, "scanout: a released buffer's token still works\n");
		return 1;
	}
	printf("%s\n", rc == 0 ? "PASS" : "FAIL");
	return rc;
}
