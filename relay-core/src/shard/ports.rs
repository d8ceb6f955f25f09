//! The port slice a shard owns: a free bitmap with randomized choice of
//! single ports (rtcp-mux) and even/odd pairs (RTP + RTCP).

/// Free/used state of `count` consecutive ports starting at `base`.
#[derive(Debug, Clone)]
pub struct PortPool {
    base: u16,
    count: usize,
    free: Vec<u64>,
    free_count: usize,
}

impl PortPool {
    /// All ports `base .. base + count` free. `count` may be 0.
    pub fn new(base: u16, count: usize) -> Self {
        let words = count.div_ceil(64);
        let mut free = vec![u64::MAX; words];
        if !count.is_multiple_of(64) {
            if let Some(last) = free.last_mut() {
                *last = (1u64 << (count % 64)) - 1;
            }
        }
        Self { base, count, free, free_count: count }
    }

    /// First port.
    pub fn base(&self) -> u16 {
        self.base
    }
    /// Number of ports.
    pub fn len(&self) -> usize {
        self.count
    }
    /// Ports free now.
    pub fn free_count(&self) -> usize {
        self.free_count
    }
    /// Whether `port` is in this pool.
    pub fn contains(&self, port: u16) -> bool {
        port >= self.base && usize::from(port - self.base) < self.count
    }
    /// Whether `port` is in the pool and free.
    pub fn is_free(&self, port: u16) -> bool {
        self.contains(port) && {
            let i = usize::from(port - self.base);
            self.free[i / 64] & (1 << (i % 64)) != 0
        }
    }

    /// Takes a random free port.
    pub fn take_single(&mut self, rng: &mut fastrand::Rng) -> Option<u16> {
        let i = self.find(rng, |w| w)?;
        self.mark_used(i);
        Some(self.port(i))
    }

    /// Takes a random free pair `(even, even + 1)` (even relative to port 0).
    pub fn take_pair(&mut self, rng: &mut fastrand::Rng) -> Option<u16> {
        // Bit positions in the word whose port number is even.
        let even_bits = if self.base.is_multiple_of(2) { 0x5555_5555_5555_5555u64 } else { 0xaaaa_aaaa_aaaa_aaaau64 };
        let i = self.find(rng, |w| w & (w >> 1) & even_bits)?;
        // Bit 63 pairs with bit 0 of the next word; the mask above never
        // selects it because `w >> 1` clears bit 63; check the neighbour anyway.
        let port = self.port(i);
        if !self.is_free(port.checked_add(1)?) {
            return None;
        }
        self.mark_used(i);
        self.mark_used(i + 1);
        Some(port)
    }

    /// Takes `port` itself, if it is in the pool and free (a session
    /// restored on the ports it had).
    pub fn take_exact(&mut self, port: u16) -> bool {
        if !self.is_free(port) {
            return false;
        }
        self.mark_used(usize::from(port - self.base));
        true
    }

    /// Returns a port to the pool.
    pub fn release(&mut self, port: u16) {
        if self.contains(port) && !self.is_free(port) {
            let i = usize::from(port - self.base);
            self.free[i / 64] |= 1 << (i % 64);
            self.free_count += 1;
        }
    }

    fn port(&self, i: usize) -> u16 {
        self.base + i as u16
    }

    fn mark_used(&mut self, i: usize) {
        self.free[i / 64] &= !(1 << (i % 64));
        self.free_count -= 1;
    }

    /// Finds a set bit of `mask(word)`, starting at a random word and bit.
    fn find(&self, rng: &mut fastrand::Rng, mask: impl Fn(u64) -> u64) -> Option<usize> {
        let words = self.free.len();
        if words == 0 || self.free_count == 0 {
            return None;
        }
        let start = rng.usize(..words);
        for k in 0..=words {
            let w = (start + k) % words;
            let mut m = mask(self.free[w]);
            if m == 0 {
                continue;
            }
            if k == 0 {
                // Prefer bits at or above a random offset in the first word.
                let high = m & (u64::MAX << rng.u32(..64));
                if high != 0 {
                    m = high;
                }
            }
            return Some(w * 64 + m.trailing_zeros() as usize);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn singles_and_pairs_until_exhausted() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut pool = PortPool::new(30000, 10);
        let mut pairs = vec![];
        while let Some(p) = pool.take_pair(&mut rng) {
            assert_eq!(p % 2, 0);
            pairs.push(p);
        }
        assert_eq!(pairs.len(), 5);
        assert_eq!(pool.free_count(), 0);
        assert_eq!(pool.take_single(&mut rng), None);
        pool.release(pairs[0] + 1);
        assert_eq!(pool.take_pair(&mut rng), None, "lone odd port is no pair");
        assert_eq!(pool.take_single(&mut rng), Some(pairs[0] + 1));
    }

    #[test]
    fn odd_base_and_partial_words() {
        let mut rng = fastrand::Rng::with_seed(2);
        let mut pool = PortPool::new(40001, 131);
        let mut seen = std::collections::HashSet::new();
        while let Some(p) = pool.take_pair(&mut rng) {
            assert_eq!(p % 2, 0, "pairs start on even ports");
            assert!(pool.contains(p + 1));
            assert!(seen.insert(p) && seen.insert(p + 1));
        }
        while let Some(p) = pool.take_single(&mut rng) {
            assert!(seen.insert(p));
        }
        assert_eq!(seen.len(), 131);
        assert!(seen.iter().all(|p| (40001..40132).contains(p)));
    }

    #[test]
    fn choice_is_randomized() {
        let first: std::collections::HashSet<u16> = (0..20)
            .map(|seed| PortPool::new(20000, 10000).take_single(&mut fastrand::Rng::with_seed(seed)).unwrap_or(0))
            .collect();
        assert!(first.len() > 10, "ports should not be predictable: {first:?}");
    }
}
