//! Bad input, case by case: each exits 1 with nothing on stdout, and the first line of
//! stderr names the problem (exact lines in an insta snapshot). Platform files are written
//! into a scratch directory and given by relative path, so the lines do not depend on it.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command as Std, Stdio};
use std::time::Duration;

use assert_cmd::Command;

const OMAP3: &str = include_str!("../../../platforms/omap3.toml");

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("dmaplace-cli-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// `<name>.toml`: omap3 renamed to `name`, with `edit` applied.
    fn platform(&self, name: &str, edit: impl FnOnce(String) -> String) {
        let text = edit(OMAP3.replacen("name = \"omap3\"", &format!("name = \"{name}\""), 1));
        std::fs::write(self.path(&format!("{name}.toml")), text).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs dmaplace in `dir`; returns the exit code, stdout and the first line of stderr.
fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::cargo_bin("dmaplace")
        .unwrap()
        .current_dir(dir)
        .args(args)
        .timeout(Duration::from_secs(20))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr.lines().next().unwrap_or("").to_owned();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), first)
}

/// Inserts `extra` after the first occurrence of `anchor`.
fn after(text: String, anchor: &str, extra: &str) -> String {
    let at = text.find(anchor).unwrap_or_else(|| panic!("no {anchor:?}")) + anchor.len();
    format!("{}{extra}{}", &text[..at], &text[at..])
}

const CMA_END: &str = "start = 0x9c00_0000\nsize = \"64MiB\"\n";

fn modifier(name: &str, value: &str, width: &str, height: u32) -> String {
    format!(
        "\n[[modifier]]\nname = \"{name}\"\nvalue = {value}\ntile_width = {{ bytes = {width} }}\ntile_height = {height}\n"
    )
}

/// Writes every malformed platform file; returns `(case, file)`.
fn platform_cases(s: &Scratch) -> Vec<(&'static str, String)> {
    let mut cases = Vec::new();
    let mut add = |case: &'static str, name: &str, edit: &dyn Fn(String) -> String| {
        s.platform(name, edit);
        cases.push((case, format!("{name}.toml")));
    };
    add("two CMA areas overlap", "cma-cma", &|t| {
        after(t, CMA_END, "\n[[memory.cma]]\nname = \"cma2\"\nstart = 0x9e00_0000\nsize = \"16MiB\"\n")
    });
    add("a carveout overlaps a CMA area", "cma-carveout", &|t| {
        after(t, CMA_END, "\n[[memory.carveout]]\nname = \"fw\"\nstart = 0x9f00_0000\nsize = \"1MiB\"\n")
    });
    add("two carveouts overlap", "carveouts", &|t| {
        after(
            t,
            CMA_END,
            "\n[[memory.carveout]]\nname = \"a\"\nstart = 0x9000_0000\nsize = \"16MiB\"\n\n[[memory.carveout]]\nname = \"b\"\nstart = 0x9080_0000\nsize = \"16MiB\"\n",
        )
    });
    add("a modifier with a zero tile width", "tile-width", &|t| {
        t + &modifier("VENDOR_A", "0x0a00000000000001", "0", 8)
    });
    add("a modifier with a zero tile height", "tile-height", &|t| {
        t + &modifier("VENDOR_A", "0x0a00000000000001", "64", 0)
    });
    add("two modifiers with one value", "dup-value", &|t| {
        t + &modifier("VENDOR_A", "0x0a00000000000001", "64", 8) + &modifier("VENDOR_B", "0x0a00000000000001", "64", 8)
    });
    add("two modifiers with one name", "dup-name", &|t| {
        t + &modifier("VENDOR_A", "0x0a00000000000001", "64", 8) + &modifier("VENDOR_A", "0x0a00000000000002", "64", 8)
    });
    add("a modifier redefines a built-in value", "builtin-value", &|t| {
        t + &modifier("MY_X_TILES", "0x0100000000000001", "512", 8)
    });
    add("a modifier takes a built-in name", "builtin-name", &|t| t + &modifier("LINEAR", "0x0a00000000000001", "1", 1));
    add("a modifier is DRM_FORMAT_MOD_INVALID", "invalid-modifier", &|t| {
        t + &modifier("NOTHING", "0x00ffffffffffffff", "1", 1)
    });
    add("a device lists DRM_FORMAT_MOD_INVALID", "invalid-format-modifier", &|t| {
        t.replacen("{ fourcc = \"XR24\" },", "{ fourcc = \"XR24\", modifiers = [0x00ffffffffffffff] },", 1)
    });
    add("max_segment_size = 0", "segment-size", &|t| {
        t.replacen("dma_mask = 32\ncache_modes", "dma_mask = 32\nmax_segment_size = 0\ncache_modes", 1)
    });
    add("a size of the wrong type", "size-type", &|t| t.replacen("size = \"512MiB\"", "size = true", 1));
    add("an SI size", "size-si", &|t| t.replacen("size = \"512MiB\"", "size = \"512MB\"", 1));
    add("a modifier preference of the wrong type", "preference-type", &|t| {
        t.replacen("cache_preference", "modifier_preference = [true]\ncache_preference", 1)
    });
    add("a DMA mask of the wrong type", "mask-type", &|t| {
        t.replacen("dma_mask = 32\ncache_modes", "dma_mask = \"wide\"\ncache_modes", 1)
    });
    cases
}

#[test]
fn malformed_platform_files_exit_1_naming_the_field_and_value() {
    let s = Scratch::new("platform");
    let mut table = String::new();
    for (case, file) in platform_cases(&s) {
        let (code, out, first) = run(&s.0, &["devices", "-p", &file]);
        assert_eq!(code, 1, "{case}: {first}");
        assert!(out.is_empty(), "{case}: printed {out}");
        table += &format!("{case}\n  {first}\n");
    }
    insta::assert_snapshot!(table);
}

#[test]
fn platform_files_that_are_not_regular_small_utf8_files_named_after_their_platform() {
    let s = Scratch::new("files");
    s.platform("renamed", |t| t);
    std::fs::rename(s.path("renamed.toml"), s.path("other.toml")).unwrap();
    std::fs::write(s.path("latin1.toml"), b"[platform]\nname = \"caf\xe9\"\n").unwrap();
    std::fs::write(s.path("huge.toml"), vec![b'#'; (1 << 20) + 1]).unwrap();
    std::fs::create_dir(s.path("dir.toml")).unwrap();
    let fifo = Std::new("mkfifo").arg(s.path("fifo.toml")).status().unwrap();
    assert!(fifo.success());
    let cases: &[(&str, &str)] = &[
        ("the platform's name differs from its file name", "other.toml"),
        ("not UTF-8", "latin1.toml"),
        ("over 1 MiB", "huge.toml"),
        ("a directory", "dir.toml"),
        ("a FIFO (must not wait for a writer)", "fifo.toml"),
        ("a character device", "/dev/zero"),
        ("missing", "missing.toml"),
    ];
    let mut table = String::new();
    for (case, file) in cases {
        let (code, out, first) = run(&s.0, &["solve", "-p", file, "-d", "dss", "--size", "1M"]);
        assert_eq!(code, 1, "{case}: {first}");
        assert!(out.is_empty(), "{case}: printed {out}");
        table += &format!("{case}\n  {first}\n");
    }
    insta::assert_snapshot!(table);
}

#[test]
fn bad_arguments_exit_1_with_the_reason_on_the_first_line() {
    let dir = std::env::temp_dir();
    let image = ["--image", "64x64", "--format", "XR24"];
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("an SI size is ambiguous", vec!["solve", "-p", "omap3", "-d", "dss", "--size", "8MB"]),
        ("a device given twice", vec!["solve", "-p", "omap3", "-d", "dss:scanout", "-d", "dss", "--size", "1M"]),
        (
            "DRM_FORMAT_MOD_INVALID by name",
            [&["solve", "-p", "omap3", "-d", "dss"][..], &image, &["--modifier", "INVALID"]].concat(),
        ),
        (
            "DRM_FORMAT_MOD_INVALID by value",
            [&["solve", "-p", "omap3", "-d", "dss"][..], &image, &["--modifier", "0x00ffffffffffffff"]].concat(),
        ),
    ];
    let mut table = String::new();
    for (case, args) in cases {
        let (code, out, first) = run(&dir, &args);
        assert_eq!(code, 1, "{case}: {first}");
        assert!(out.is_empty(), "{case}: printed {out}");
        table += &format!("{case}\n  {first}\n");
    }
    insta::assert_snapshot!(table);
}

/// `dmaplace ... | head -c1`: the reader closes the pipe; dmaplace stops writing, prints
/// nothing on stderr and exits with the command's own status.
#[test]
fn a_closed_stdout_ends_quietly() {
    let cases: &[(&[&str], i32)] = &[
        (&["solve", "-p", "x86-desktop", "-d", "igpu", "--image", "1920x1080", "--format", "XR24", "--json"], 0),
        (&["solve", "-p", "refsoc", "-d", "dpu:scanout", "-d", "isp", "--size", "1MiB"], 2),
        (&["demo"], 0),
        (&["devices", "-p", "x86-desktop", "--json"], 0),
    ];
    let bin = assert_cmd::cargo::cargo_bin("dmaplace");
    for (args, status) in cases {
        let mut child = Std::new(&bin).args(*args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        // Close the read end at once: every write dmaplace makes meets a closed pipe.
        drop(child.stdout.take());
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let code = child.wait().unwrap().code();
        assert_eq!(code, Some(*status), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?} wrote to stderr: {err}");
    }
}

/// The JSON `modifier_name` is the platform's own name for its own modifier, as in the
/// text report.
#[test]
fn json_modifier_names_come_from_the_platform() {
    let s = Scratch::new("modifier-name");
    s.platform("vendor", |t| {
        let t = t.replacen("cache_preference", "modifier_preference = [\"VENDOR_TILED\"]\ncache_preference", 1);
        let t = t.replacen(
            "pitch_align = 32\nformats = [\n  { fourcc = \"XR24\" },",
            "pitch_align = 32\nformats = [\n  { fourcc = \"XR24\", modifiers = [\"LINEAR\", 0x0a00000000000001] },",
            1,
        );
        t + &modifier("VENDOR_TILED", "0x0a00000000000001", "64", 8)
    });
    let args = ["solve", "-p", "vendor.toml", "-d", "sgx", "--image", "100x100", "--format", "XR24"];
    let (code, text, first) = run(&s.0, &args);
    assert_eq!(code, 0, "{first}");
    assert!(text.contains("modifier          VENDOR_TILED"), "{text}");
    let (code, json, first) = run(&s.0, &[&args[..], &["--json"]].concat());
    assert_eq!(code, 0, "{first}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["plan"]["layout"]["modifier"], 0x0a00_0000_0000_0001_u64);
    assert_eq!(v["plan"]["layout"]["modifier_name"], "VENDOR_TILED");
    // 100 px * 4 B = 400 B, in 64 B tiles: 448 B; 100 rows in 8-row tiles: 104.
    assert_eq!(v["plan"]["layout"]["planes"][0]["pitch"], 448);
    assert_eq!(v["plan"]["layout"]["planes"][0]["rows"], 104);
}
