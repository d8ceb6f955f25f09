//! Receive-side bookkeeping per stream: unique packets, duplicates and
//! reordering from the 64-bit sequence number in each packet.

/// One stream's receive state.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    highest: Option<u64>,
    /// Bit i set: packet `highest - i` was received (i < 128).
    window: u128,
    /// Unique packets received.
    pub unique: u64,
    /// Packets received more than once.
    pub duplicates: u64,
    /// Packets that arrived after a later one.
    pub reordered: u64,
    /// Packets older than the window (counted as received, may hide a duplicate).
    pub too_old: u64,
}

impl SeqTracker {
    /// Records packet `seq`.
    pub fn record(&mut self, seq: u64) {
        let Some(h) = self.highest else {
            self.highest = Some(seq);
            self.window = 1;
            self.unique = 1;
            return;
        };
        if seq > h {
            let shift = seq - h;
            self.window = if shift >= 128 { 0 } else { self.window << shift };
            self.window |= 1;
            self.highest = Some(seq);
            self.unique += 1;
            return;
        }
        let age = h - seq;
        if age >= 128 {
            self.too_old += 1;
            self.unique += 1;
            self.reordered += 1;
            return;
        }
        let bit = 1u128 << age;
        if self.window & bit != 0 {
            self.duplicates += 1;
        } else {
            self.window |= bit;
            self.unique += 1;
            self.reordered += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_unique_duplicates_and_reordering() {
        let mut t = SeqTracker::default();
        for s in [0, 1, 2, 4, 3, 3, 5, 5, 300, 100] {
            t.record(s);
        }
        assert_eq!(t.unique, 8);
        assert_eq!(t.duplicates, 2);
        assert_eq!(t.reordered, 2);
        assert_eq!(t.too_old, 1);
    }
}
