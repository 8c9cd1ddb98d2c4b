// SPDX-License-Identifier: GPL-2.0

//! Who pays for a buffer: every buffer is charged, at CREATE (or heap ALLOC),
//! its full size against its owner's byte limit, before any page exists, and
//! the charge is returned when the buffer is released.
//!
//! The owner is the open file of `/dev/dmaplace` that created the buffer. The
//! limit is the `owner_limit_mib` module parameter (MiB per owner, default
//! [`DEFAULT_OWNER_LIMIT_MIB`]; 0: no limit), read at each charge, so root can
//! change it at run time through `/sys/module/dmaplace/parameters/`. Charging the
//! size rather than the pages placed is deliberate: allocation is deferred to the
//! first map, possibly in another process, and a limit checked only then could be
//! exceeded by creating many empty buffers first.
//!
//! Pages are also charged to the creator's memory cgroup when they are placed
//! (see `backing.rs`); this limit is the one that holds without memcg.

use core::sync::atomic::{AtomicU64, Ordering};

use kernel::error::{Result, code};
use kernel::prelude::*;
use kernel::sync::Arc;

use crate::sys::UintParam;

/// The default of `owner_limit_mib`.
pub const DEFAULT_OWNER_LIMIT_MIB: u32 = 4096;

/// `owner_limit_mib`: bytes (in MiB) of buffers one owner may hold; 0: no limit.
pub static OWNER_LIMIT_MIB: UintParam = UintParam(core::sync::atomic::AtomicU32::new(DEFAULT_OWNER_LIMIT_MIB));

crate::module_param!(__PARAM_OWNER_LIMIT_MIB, "owner_limit_mib", param_ops_uint, OWNER_LIMIT_MIB, 0o644);

/// One owner's running total.
pub struct Account {
    /// Bytes of live buffers charged to it.
    charged: AtomicU64,
    /// Charges refused at the limit.
    refused: AtomicU64,
}

impl Account {
    /// A new owner with nothing charged.
    pub fn new() -> Result<Arc<Account>> {
        Ok(Arc::new(Account { charged: AtomicU64::new(0), refused: AtomicU64::new(0) }, GFP_KERNEL)?)
    }

    /// Bytes charged now.
    pub fn charged(&self) -> u64 {
        self.charged.load(Ordering::Relaxed)
    }

    /// Charges refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The limit in bytes (`u64::MAX` when there is none).
    pub fn limit() -> u64 {
        match OWNER_LIMIT_MIB.get() {
            0 => u64::MAX,
            mib => u64::from(mib) << 20,
        }
    }

    /// Charges `bytes`: `ENOMEM` (and nothing charged) when the owner would go
    /// over the limit. The charge is returned when the [`Charge`] is dropped.
    pub fn charge(this: &Arc<Account>, bytes: u64) -> Result<Charge> {
        let limit = Self::limit();
        let mut cur = this.charged.load(Ordering::Relaxed);
        loop {
            let next = cur.checked_add(bytes).filter(|n| *n <= limit);
            let Some(next) = next else {
                this.refused.fetch_add(1, Ordering::Relaxed);
                pr_info!(
                    "owner holds {:#x} bytes; {:#x} more would pass owner_limit_mib={}: ENOMEM\n",
                    cur,
                    bytes,
                    OWNER_LIMIT_MIB.get()
                );
                return Err(code::ENOMEM);
            };
            match this.charged.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(Charge { account: this.clone(), bytes }),
                Err(now) => cur = now,
            }
        }
    }
}

/// Bytes charged to an [`Account`], returned on drop.
pub struct Charge {
    account: Arc<Account>,
    bytes: u64,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.account.charged.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}
