//! A hierarchical bitmap: 64-way summary levels make "find the next set bit at or after
//! `i`" cost O(levels) (four levels cover 16M bits), independent of how much is free.

/// Converts a bitmap index to `usize`.
pub(crate) fn ix(i: u64) -> usize {
    // CAST: bitmaps are sized from page counts of a 64-bit address space divided by 64 at
    // least once; on the 64-bit hosts this crate targets usize is 64 bits.
    usize::try_from(i).expect("bitmap index fits in usize")
}

/// A set of `0..len` with fast ordered search.
#[derive(Clone, Debug)]
pub(crate) struct HBitmap {
    len: u64,
    /// `levels[0]` holds the bits; bit `j` of `levels[l + 1]` is set iff word `j` of
    /// `levels[l]` is non-zero. The last level is a single word.
    levels: Vec<Vec<u64>>,
    count: u64,
}

impl HBitmap {
    /// An empty set over `0..len`.
    pub(crate) fn new(len: u64) -> HBitmap {
        let mut levels = Vec::new();
        let mut n = len.max(1);
        loop {
            let words = n.div_ceil(64);
            levels.push(vec![0u64; ix(words)]);
            if words == 1 {
                break;
            }
            n = words;
        }
        HBitmap { len, levels, count: 0 }
    }

    /// How many bits are set.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// Whether `i` is in the set (false outside `0..len`).
    #[inline]
    pub(crate) fn test(&self, i: u64) -> bool {
        i < self.len && (self.levels[0][ix(i / 64)] >> (i % 64)) & 1 != 0
    }

    /// Adds `i`; returns whether it was absent.
    #[inline]
    pub(crate) fn set(&mut self, i: u64) -> bool {
        debug_assert!(i < self.len, "bit {i} outside 0..{}", self.len);
        let mut idx = i;
        for level in 0..self.levels.len() {
            let w = &mut self.levels[level][ix(idx / 64)];
            let was = *w;
            *w |= 1 << (idx % 64);
            if level == 0 {
                if was == *w {
                    return false;
                }
                self.count += 1;
            }
            if was != 0 {
                break;
            }
            idx /= 64;
        }
        true
    }

    /// Removes `i`; returns whether it was present.
    #[inline]
    pub(crate) fn clear(&mut self, i: u64) -> bool {
        if i >= self.len {
            return false;
        }
        let mut idx = i;
        for level in 0..self.levels.len() {
            let w = &mut self.levels[level][ix(idx / 64)];
            let was = *w;
            *w &= !(1 << (idx % 64));
            if level == 0 {
                if was == *w {
                    return false;
                }
                self.count -= 1;
            }
            if *w != 0 {
                break;
            }
            idx /= 64;
        }
        true
    }

    /// The smallest member `>= from`.
    #[inline]
    pub(crate) fn find_next(&self, from: u64) -> Option<u64> {
        if from >= self.len {
            return None;
        }
        let mut idx = from;
        let mut level = 0;
        // Climb until a word holds a set bit at or after the position.
        loop {
            let words = &self.levels[level];
            let w = ix(idx / 64);
            if w >= words.len() {
                return None;
            }
            let word = words[w] & (u64::MAX << (idx % 64));
            if word != 0 {
                idx = (idx / 64) * 64 + u64::from(word.trailing_zeros());
                break;
            }
            level += 1;
            if level == self.levels.len() {
                return None;
            }
            idx = idx / 64 + 1;
        }
        // Descend along the first set bits.
        while level > 0 {
            level -= 1;
            let word = self.levels[level][ix(idx)];
            debug_assert!(word != 0, "summary bit set over an empty word");
            idx = idx * 64 + u64::from(word.trailing_zeros());
        }
        Some(idx)
    }

    /// Members in increasing order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let mut next = self.find_next(0);
        std::iter::from_fn(move || {
            let cur = next?;
            next = self.find_next(cur + 1);
            Some(cur)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_across_levels() {
        let mut b = HBitmap::new(1 << 20);
        assert_eq!(b.find_next(0), None);
        assert!(b.set(5));
        assert!(!b.set(5));
        assert!(b.set(70_000));
        assert!(b.set((1 << 20) - 1));
        assert_eq!(b.find_next(0), Some(5));
        assert_eq!(b.find_next(6), Some(70_000));
        assert_eq!(b.find_next(70_001), Some((1 << 20) - 1));
        assert_eq!(b.find_next(1 << 20), None);
        assert_eq!(b.count(), 3);
        assert!(b.clear(70_000));
        assert!(!b.clear(70_000));
        assert_eq!(b.find_next(6), Some((1 << 20) - 1));
        assert_eq!(b.iter().collect::<Vec<_>>(), [5, (1 << 20) - 1]);
    }

    #[test]
    fn small_and_odd_lengths() {
        let mut b = HBitmap::new(1);
        assert!(b.set(0));
        assert_eq!(b.find_next(0), Some(0));
        assert_eq!(b.find_next(1), None);
        let mut b = HBitmap::new(4097);
        b.set(4096);
        assert_eq!(b.find_next(0), Some(4096));
        assert!(!b.test(5000));
    }
}
