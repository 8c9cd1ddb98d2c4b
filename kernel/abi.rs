// SPDX-License-Identifier: GPL-2.0 OR MIT OR Apache-2.0

//! The userspace ABI of `/dev/dmaplace` and `/dev/dmaplace_testdev`: ioctl
//! numbers, struct sizes, field offsets and flags. Pure `core`: the modules
//! include it as `mod abi;` and `crates/linux/src/kmod/mod.rs` includes the same
//! file, so the two sides cannot drift. `docs/KERNEL.md` shows the structs in C.
//!
//! Rules (as `drivers/dma-buf/dma-heap.c`, stricter where noted):
//! - every struct has a fixed size and layout (native endian, 8-byte aligned
//!   u64s); the size is part of the ioctl number;
//! - a caller with a smaller (older) struct is zero-extended; a larger (newer)
//!   struct is accepted only when the bytes this module does not know are zero,
//!   else `E2BIG` (`copy_struct_from_user`);
//! - unknown flag bits are `EINVAL`; output fields must be zero on input
//!   (`EINVAL`); reserved fields must be zero (`EINVAL`);
//! - sizes are non-zero multiples of 4 KiB (`EINVAL`).
#![allow(dead_code)]

/// The ioctl type byte of both devices.
pub const MAGIC: u8 = b'P';

const fn ioc(dir: u32, nr: u8, size: usize) -> u32 {
    // CAST: sizes here are far below 1 << 14.
    (dir << 30) | ((size as u32) << 16) | ((MAGIC as u32) << 8) | nr as u32
}
const W: u32 = 1;
const R: u32 = 2;

// ---------------------------------------------------------------- /dev/dmaplace

/// `struct dmaplace_create`: 64 bytes.
///
/// | off | field | dir |
/// |---|---|---|
/// | 0 | `u64 size` | in: page-aligned, non-zero, at most [`MAX_SIZE`] |
/// | 8 | `u32 fd` | out (0 on input) |
/// | 12 | `u32 fd_flags` | in: `O_CLOEXEC` and `O_ACCMODE` bits only |
/// | 16 | `u64 flags` | in: [`CREATE_WRITECOMBINE`]; other bits must be 0 |
/// | 24 | `u64 id` | out (0 on input): the buffer's id in debugfs |
/// | 32 | `char name[32]` | in: NUL-terminated, printable, no spaces or `=`; may be empty |
pub const CREATE_SIZE: usize = 64;
/// `DMAPLACE_IOCTL_CREATE`: `_IOWR('P', 0, struct dmaplace_create)`.
pub const IOCTL_CREATE: u32 = ioc(W | R, 0, CREATE_SIZE);
/// Field offsets of `struct dmaplace_create`.
pub mod create {
    /// `u64 size`.
    pub const SIZE: usize = 0;
    /// `u32 fd`.
    pub const FD: usize = 8;
    /// `u32 fd_flags`.
    pub const FD_FLAGS: usize = 12;
    /// `u64 flags`.
    pub const FLAGS: usize = 16;
    /// `u64 id`.
    pub const ID: usize = 24;
    /// `char name[32]`.
    pub const NAME: usize = 32;
    /// Length of `name`, with its NUL.
    pub const NAME_LEN: usize = 32;
}
/// The largest buffer CREATE accepts (1 GiB): nothing is allocated before the
/// first map, so this keeps absurd sizes out early.
pub const MAX_SIZE: u64 = 1 << 30;
/// `fd_flags` bits CREATE accepts (`O_CLOEXEC | O_ACCMODE`, as dma-heap).
pub const VALID_FD_FLAGS: u32 = 0o2000000 | 0o3;
/// CREATE flag: CPU mappings of the buffer (mmap, vmap) are write-combined, and
/// so are its pages in the kernel's own map (for devices that do not snoop the
/// CPU caches; on x86 every device in the rig does, so this is a request).
pub const CREATE_WRITECOMBINE: u64 = 1;

/// `struct dmaplace_declare`: 96 bytes. Declares the constraints a device's
/// `struct device` cannot express yet (the seed's proposed
/// `device_dma_parameters` fields); they apply to attachments made after it.
///
/// | off | field | |
/// |---|---|---|
/// | 0 | `char device[64]` | `dev_name()`, NUL-terminated |
/// | 64 | `u32 max_segments` | 0: no limit; 1: physically contiguous |
/// | 68 | `u32 flags` | [`DECLARE_FORGET`] |
/// | 72 | `u64 alignment` | 0: 4 KiB; else a power of two, 4 KiB ..= [`MAX_ALIGNMENT`] |
/// | 80 | `u64 max_segment_size` | 0: the device's own (`dma_get_max_seg_size`); else 4 KiB ..= `u32::MAX`, standing in for a `dma_set_max_seg_size` its driver did not make |
/// | 88 | `u64 reserved` | must be 0 |
pub const DECLARE_SIZE: usize = 96;
/// `DMAPLACE_IOCTL_DECLARE`: `_IOW('P', 1, struct dmaplace_declare)`.
pub const IOCTL_DECLARE: u32 = ioc(W, 1, DECLARE_SIZE);
/// Field offsets of `struct dmaplace_declare`.
pub mod declare {
    /// `char device[64]`.
    pub const DEVICE: usize = 0;
    /// Length of `device`, with its NUL.
    pub const DEVICE_LEN: usize = 64;
    /// `u32 max_segments`.
    pub const MAX_SEGMENTS: usize = 64;
    /// `u32 flags`.
    pub const FLAGS: usize = 68;
    /// `u64 alignment`.
    pub const ALIGNMENT: usize = 72;
    /// `u64 max_segment_size`.
    pub const MAX_SEGMENT_SIZE: usize = 80;
    /// `u64 reserved`.
    pub const RESERVED: usize = 88;
}
/// DECLARE flag: forget the device's declaration (the other fields must be 0).
pub const DECLARE_FORGET: u32 = 1;
/// The largest DECLAREd alignment (4 MiB: the page allocator's largest block).
pub const MAX_ALIGNMENT: u64 = 4 << 20;
/// The most devices with a declaration.
pub const MAX_DECLARATIONS: usize = 64;

// ---------------------------------------------------------------- /dev/dmaplace_testdev

/// `struct dmaplace_td_device`: 64 bytes. Creates a fake importer: a platform
/// device (no driver) with these DMA parameters.
///
/// | off | field | |
/// |---|---|---|
/// | 0 | `char name[32]` | the device name (`dev_name`) |
/// | 32 | `u64 dma_mask` | non-zero; `dma_set_mask_and_coherent` |
/// | 40 | `u64 bus_dma_limit` | 0: none |
/// | 48 | `u32 max_segment_size` | 0: leave the default (64 KiB) |
/// | 52 | `u32 flags` | none defined |
/// | 56 | `u64 segment_boundary_mask` | 0: leave the default (none) |
pub const TD_DEVICE_SIZE: usize = 64;
/// `DMAPLACE_TD_CREATE_DEVICE`: `_IOW('P', 0x40, struct dmaplace_td_device)`.
pub const TD_CREATE_DEVICE: u32 = ioc(W, 0x40, TD_DEVICE_SIZE);
/// Field offsets of `struct dmaplace_td_device`.
pub mod td_device {
    /// `char name[32]`.
    pub const NAME: usize = 0;
    /// Length of `name`.
    pub const NAME_LEN: usize = 32;
    /// `u64 dma_mask`.
    pub const DMA_MASK: usize = 32;
    /// `u64 bus_dma_limit`.
    pub const BUS_DMA_LIMIT: usize = 40;
    /// `u32 max_segment_size`.
    pub const MAX_SEGMENT_SIZE: usize = 48;
    /// `u32 flags`.
    pub const FLAGS: usize = 52;
    /// `u64 segment_boundary_mask`.
    pub const SEGMENT_BOUNDARY_MASK: usize = 56;
}

/// `struct dmaplace_td_attach`: 80 bytes. Attaches a dma-buf fd to a fake
/// device, or to a real PCI device by its name (`0000:00:02.0`).
///
/// | off | field | |
/// |---|---|---|
/// | 0 | `char device[64]` | |
/// | 64 | `s32 fd` | the dma-buf |
/// | 68 | `u32 flags` | [`TD_ATTACH_DYNAMIC`] |
/// | 72 | `u64 handle` | out (0 on input) |
pub const TD_ATTACH_SIZE: usize = 80;
/// `DMAPLACE_TD_ATTACH`: `_IOWR('P', 0x41, struct dmaplace_td_attach)`.
pub const TD_ATTACH: u32 = ioc(W | R, 0x41, TD_ATTACH_SIZE);
/// Field offsets of `struct dmaplace_td_attach`.
pub mod td_attach {
    /// `char device[64]`.
    pub const DEVICE: usize = 0;
    /// Length of `device`.
    pub const DEVICE_LEN: usize = 64;
    /// `s32 fd`.
    pub const FD: usize = 64;
    /// `u32 flags`.
    pub const FLAGS: usize = 68;
    /// `u64 handle`.
    pub const HANDLE: usize = 72;
}
/// Attach as a dynamic importer (`dma_buf_dynamic_attach` with `move_notify`):
/// nothing is mapped until MAP. Without it the dma-buf core maps at attach.
pub const TD_ATTACH_DYNAMIC: u32 = 1;
/// With [`TD_ATTACH_DYNAMIC`]: the importer unmaps all its mappings inside
/// `move_notify` (an eager importer); without it, it keeps them until UNMAP (a
/// lazy one, whose old pages the exporter must keep until then).
pub const TD_ATTACH_UNMAP_ON_MOVE: u32 = 2;

/// `struct dmaplace_td_map`: 40 bytes. Maps the attachment and copies the DMA
/// side of the sg table out: `nents` entries of `{u64 dma_address; u64 dma_length}`.
///
/// | off | field | |
/// |---|---|---|
/// | 0 | `u64 handle` | |
/// | 8 | `u64 entries` | user pointer to `max_entries` entries |
/// | 16 | `u32 max_entries` | |
/// | 20 | `u32 nents` | out: DMA entries (may exceed `max_entries`: only that many are copied) |
/// | 24 | `u32 dir` | `enum dma_data_direction`: 0 bidirectional, 1 to device, 2 from device |
/// | 28 | `u32 orig_nents` | out: entries of the table the exporter built |
/// | 32 | `u64 reserved` | must be 0 |
pub const TD_MAP_SIZE: usize = 40;
/// `DMAPLACE_TD_MAP`: `_IOWR('P', 0x42, struct dmaplace_td_map)`.
pub const TD_MAP: u32 = ioc(W | R, 0x42, TD_MAP_SIZE);
/// Field offsets of `struct dmaplace_td_map`.
pub mod td_map {
    /// `u64 handle`.
    pub const HANDLE: usize = 0;
    /// `u64 entries`.
    pub const ENTRIES: usize = 8;
    /// `u32 max_entries`.
    pub const MAX_ENTRIES: usize = 16;
    /// `u32 nents`.
    pub const NENTS: usize = 20;
    /// `u32 dir`.
    pub const DIR: usize = 24;
    /// `u32 orig_nents`.
    pub const ORIG_NENTS: usize = 28;
    /// `u64 reserved`.
    pub const RESERVED: usize = 32;
}
/// Bytes per entry of the MAP output array.
pub const TD_ENTRY_SIZE: usize = 16;

/// `struct dmaplace_td_handle`: 16 bytes, `{u64 handle; u64 reserved}`.
pub const TD_HANDLE_SIZE: usize = 16;
/// `DMAPLACE_TD_UNMAP`: `_IOW('P', 0x43, struct dmaplace_td_handle)`.
pub const TD_UNMAP: u32 = ioc(W, 0x43, TD_HANDLE_SIZE);
/// `DMAPLACE_TD_DETACH`: `_IOW('P', 0x44, struct dmaplace_td_handle)`.
pub const TD_DETACH: u32 = ioc(W, 0x44, TD_HANDLE_SIZE);
/// `DMAPLACE_TD_PIN`: `_IOW('P', 0x46, struct dmaplace_td_handle)`: `dma_buf_pin`
/// (dynamic attachments only; pins nest).
pub const TD_PIN: u32 = ioc(W, 0x46, TD_HANDLE_SIZE);
/// `DMAPLACE_TD_UNPIN`: `_IOW('P', 0x47, struct dmaplace_td_handle)`: `dma_buf_unpin`.
pub const TD_UNPIN: u32 = ioc(W, 0x47, TD_HANDLE_SIZE);

/// `struct dmaplace_td_status`: 32 bytes.
///
/// | off | field | |
/// |---|---|---|
/// | 0 | `u64 handle` | |
/// | 8 | `u64 move_notifies` | out: `move_notify` calls seen |
/// | 16 | `u32 maps` | out: live mappings |
/// | 20 | `u32 flags` | out: the attach flags |
/// | 24 | `u32 pins` | out (0 on input): pins held through TD_PIN |
/// | 28 | `u32 unmapped_on_move` | out (0 on input): mappings dropped inside `move_notify` |
pub const TD_STATUS_SIZE: usize = 32;
/// `DMAPLACE_TD_STATUS`: `_IOWR('P', 0x45, struct dmaplace_td_status)`.
pub const TD_STATUS: u32 = ioc(W | R, 0x45, TD_STATUS_SIZE);
/// Field offsets of `struct dmaplace_td_status`.
pub mod td_status {
    /// `u64 handle`.
    pub const HANDLE: usize = 0;
    /// `u64 move_notifies`.
    pub const MOVE_NOTIFIES: usize = 8;
    /// `u32 maps`.
    pub const MAPS: usize = 16;
    /// `u32 flags`.
    pub const FLAGS: usize = 20;
    /// `u32 pins`.
    pub const PINS: usize = 24;
    /// `u32 unmapped_on_move`.
    pub const UNMAPPED_ON_MOVE: usize = 28;
}
