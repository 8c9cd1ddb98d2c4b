//! Buffer content: real bytes (sparse, per written frame) or one digest per frame.
//!
//! Content lives with physical frames, so moving a buffer means copying frames, and a
//! buffer's checksum is a function of its frames' content in buffer order only: a copy to
//! a backing with a different physical layout has the same checksum.

use std::collections::BTreeMap;

use crate::buddy::Pfn;

/// Bytes in a frame.
pub(crate) const PAGE: u64 = 4096;
/// [`PAGE`] as a `usize`.
const PAGE_USIZE: usize = 4096;

/// The offset of byte `offset` within its frame.
fn in_page(offset: u64) -> usize {
    usize::try_from(offset % PAGE).expect("below 4096")
}

/// 64-bit mixing (the splitmix64 finaliser over `a ^ b * golden`).
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = mix(seed, bytes.len() as u64);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        h = mix(h, u64::from_le_bytes(c.try_into().expect("chunks of 8")));
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    mix(h, u64::from_le_bytes(tail))
}

/// The content model actually in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Bytes,
    Checksum,
}

#[derive(Clone, Debug)]
enum Frame {
    Bytes(Box<[u8]>),
    Digest(u64),
}

/// The content of every frame that is not all zeroes.
#[derive(Debug)]
pub(crate) struct Content {
    mode: Mode,
    frames: BTreeMap<Pfn, Frame>,
    zero_digest: u64,
}

/// The frames of a buffer in order, starting at frame `first`.
fn frames_from(runs: &[(Pfn, u64)], first: u64) -> impl Iterator<Item = Pfn> + '_ {
    let mut skip = first;
    runs.iter().flat_map(move |&(pfn, pages)| {
        let s = skip.min(pages);
        skip -= s;
        pfn + s..pfn + pages
    })
}

impl Content {
    pub(crate) fn new(mode: Mode) -> Content {
        Content { mode, frames: BTreeMap::new(), zero_digest: hash_bytes(0, &[0u8; PAGE_USIZE]) }
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    fn digest(&self, pfn: Pfn) -> u64 {
        match self.frames.get(&pfn) {
            None => self.zero_digest,
            Some(Frame::Digest(d)) => *d,
            Some(Frame::Bytes(b)) => hash_bytes(0, b),
        }
    }

    /// Writes `data` at byte `offset` of the buffer made of `runs`. Bounds are checked by
    /// the caller.
    pub(crate) fn write(&mut self, runs: &[(Pfn, u64)], offset: u64, data: &[u8]) {
        let mut pos = in_page(offset);
        let mut rest = data;
        for pfn in frames_from(runs, offset / PAGE) {
            if rest.is_empty() {
                break;
            }
            let in_frame = (PAGE_USIZE - pos).min(rest.len());
            let (piece, tail) = rest.split_at(in_frame);
            match self.mode {
                Mode::Bytes => {
                    let frame = self
                        .frames
                        .entry(pfn)
                        .or_insert_with(|| Frame::Bytes(vec![0u8; PAGE_USIZE].into_boxed_slice()));
                    if let Frame::Bytes(b) = frame {
                        b[pos..pos + in_frame].copy_from_slice(piece);
                    }
                }
                Mode::Checksum => {
                    let old = self.digest(pfn);
                    self.frames.insert(pfn, Frame::Digest(mix(old, hash_bytes(pos as u64, piece))));
                }
            }
            rest = tail;
            pos = 0;
        }
    }

    /// Reads `len` bytes at `offset`; `None` in checksum mode.
    pub(crate) fn read(&self, runs: &[(Pfn, u64)], offset: u64, len: usize) -> Option<Vec<u8>> {
        if self.mode != Mode::Bytes {
            return None;
        }
        let mut out = Vec::with_capacity(len);
        let mut pos = in_page(offset);
        for pfn in frames_from(runs, offset / PAGE) {
            if out.len() == len {
                break;
            }
            let n = (PAGE_USIZE - pos).min(len - out.len());
            match self.frames.get(&pfn) {
                Some(Frame::Bytes(b)) => out.extend_from_slice(&b[pos..pos + n]),
                _ => out.resize(out.len() + n, 0),
            }
            pos = 0;
        }
        Some(out)
    }

    /// Fills every frame with a pattern derived from `seed` and the frame's index.
    pub(crate) fn fill(&mut self, runs: &[(Pfn, u64)], seed: u64) {
        for (i, pfn) in frames_from(runs, 0).enumerate() {
            let frame_seed = mix(seed, i as u64);
            let frame = match self.mode {
                Mode::Bytes => {
                    let mut b = vec![0u8; PAGE_USIZE].into_boxed_slice();
                    let mut s = frame_seed;
                    for c in b.chunks_exact_mut(8) {
                        s = mix(s, 1);
                        c.copy_from_slice(&s.to_le_bytes());
                    }
                    Frame::Bytes(b)
                }
                Mode::Checksum => Frame::Digest(frame_seed),
            };
            self.frames.insert(pfn, frame);
        }
    }

    /// A digest of the buffer's content, frame by frame in buffer order.
    pub(crate) fn checksum(&self, runs: &[(Pfn, u64)]) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325;
        if self.frames.is_empty() {
            let frames: u64 = runs.iter().map(|r| r.1).sum();
            for _ in 0..frames {
                h = mix(h, self.zero_digest);
            }
            return h;
        }
        for pfn in frames_from(runs, 0) {
            h = mix(h, self.digest(pfn));
        }
        h
    }

    /// Copies the first `frames` frames of `from` into `to`, frame by frame.
    pub(crate) fn copy(&mut self, from: &[(Pfn, u64)], to: &[(Pfn, u64)], frames: u64) {
        if self.frames.is_empty() {
            return;
        }
        let pairs: Vec<(Pfn, Pfn)> =
            frames_from(from, 0).zip(frames_from(to, 0)).take(usize::try_from(frames).unwrap_or(usize::MAX)).collect();
        for (src, dst) in pairs {
            match self.frames.get(&src).cloned() {
                Some(f) => {
                    self.frames.insert(dst, f);
                }
                None => {
                    self.frames.remove(&dst);
                }
            }
        }
    }

    /// Forgets the content of `pages` frames at `pfn` (they read as zero again).
    pub(crate) fn clear(&mut self, pfn: Pfn, pages: u64) {
        if self.frames.is_empty() {
            return;
        }
        let keys: Vec<Pfn> = self.frames.range(pfn..pfn + pages).map(|(k, _)| *k).collect();
        for k in keys {
            self.frames.remove(&k);
        }
    }

    /// Frames holding content.
    pub(crate) fn frames_held(&self) -> usize {
        self.frames.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_across_frames() {
        let mut c = Content::new(Mode::Bytes);
        let runs = [(10, 1), (50, 2)];
        let data: Vec<u8> = (0..6000u32).map(|i| (i % 251) as u8).collect();
        c.write(&runs, 4000, &data);
        assert_eq!(c.read(&runs, 4000, 6000).unwrap(), data);
        assert_eq!(c.read(&runs, 0, 10).unwrap(), [0; 10]);
        let before = c.checksum(&runs);
        let other = [(7, 3)];
        c.copy(&runs, &other, 3);
        assert_eq!(c.checksum(&other), before);
        c.clear(10, 1);
        assert_ne!(c.checksum(&runs), before);
    }

    #[test]
    fn checksum_mode_tracks_writes() {
        let mut c = Content::new(Mode::Checksum);
        let runs = [(0, 4)];
        let zero = c.checksum(&runs);
        c.write(&runs, 100, b"hello");
        let one = c.checksum(&runs);
        assert_ne!(zero, one);
        assert!(c.read(&runs, 0, 1).is_none());
        let other = [(100, 2), (200, 2)];
        c.copy(&runs, &other, 4);
        assert_eq!(c.checksum(&other), one);
    }
}
