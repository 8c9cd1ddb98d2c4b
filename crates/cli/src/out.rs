//! Standard output that a closed pipe ends quietly: `dmaplace solve --json | head -c1`
//! stops writing once the reader has gone, and exits with the command's own status,
//! instead of panicking in `println!`. Any other write error (a full disk) is reported.

use std::fmt;
use std::io::{self, Write as _};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);
static FAILED: Mutex<Option<String>> = Mutex::new(None);

/// Writes to stdout; after the reader has closed the pipe, writes nothing more.
pub fn write(args: fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = io::stdout().lock().write_fmt(args) {
        failed(&e);
    }
}

fn failed(e: &io::Error) {
    if e.kind() == io::ErrorKind::BrokenPipe {
        CLOSED.store(true, Ordering::Relaxed);
    } else if let Ok(mut first) = FAILED.lock() {
        first.get_or_insert_with(|| e.to_string());
        CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Flushes stdout. `Err` names a write error other than a closed pipe.
pub fn finish() -> Result<(), String> {
    if !CLOSED.load(Ordering::Relaxed)
        && let Err(e) = io::stdout().lock().flush()
    {
        failed(&e);
    }
    match FAILED.lock().map(|mut f| f.take()) {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// `print!` to stdout through [`write`].
macro_rules! out {
    ($($t:tt)*) => { $crate::out::write(format_args!($($t)*)) };
}

/// `println!` to stdout through [`write`].
macro_rules! outln {
    () => { $crate::out::write(format_args!("\n")) };
    ($($t:tt)*) => {{ $crate::out::write(format_args!($($t)*)); $crate::out::write(format_args!("\n")) }};
}

pub(crate) use {out, outln};
