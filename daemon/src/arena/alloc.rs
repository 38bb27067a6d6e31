//! The arena's allocator: segregated size classes in fixed-size superblocks.
//!
//! The arena is cut into superblocks of one chunk each (1 MiB by default).
//! A request is rounded up to the next size class (multiples of 4 KiB
//! spaced so that at most a third of a block is padding); a full-chunk
//! request takes a whole superblock. A superblock serves one class at a
//! time and goes back to the pool of free superblocks as soon as its last
//! block is freed. Blocks of a class are taken from the fullest superblock
//! of that class, so that sparsely used superblocks drain and become free.
//!
//! Why this shape: shards live in the arena as one block per chunk, so the
//! largest block ever needed is a superblock, and a free superblock always
//! satisfies it: free space never splinters across superblock boundaries.
//! The churn test below runs 1,000,000 random allocations and frees of mixed
//! sizes and checks the bound stated in [`FRAGMENTATION_BOUND`].
//!
//! A shard of several chunks asks first for a run of consecutive free
//! superblocks ([`SlabAllocator::alloc_run`], lowest first), so that its
//! bytes are one range of the arena; when free superblocks are scattered
//! and no run is long enough, it takes them one by one. A second churn test
//! measures how often a run is found as the arena fills and drains.

use std::collections::BTreeSet;
use std::ops::Range;

/// Granularity and alignment of blocks.
pub const PAGE: u32 = 4096;

/// The stated bound, checked by the churn test: whenever at least this
/// fraction of the arena is free, the largest block (a whole superblock)
/// can be allocated.
pub const FRAGMENTATION_BOUND: f64 = 0.25;

/// A block handed out by the allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Block {
    /// Byte offset in the arena (a multiple of [`PAGE`]).
    pub offset: u64,
    /// Usable bytes (the class size, at least what was asked for).
    pub size: u32,
    class: u8,
}

#[derive(Debug)]
struct Superblock {
    /// Class served, while in use.
    class: Option<u8>,
    /// Free slot numbers.
    free: Vec<u16>,
}

/// The allocator's state (no memory of its own: it hands out offsets).
#[derive(Debug)]
pub struct SlabAllocator {
    superblock: u32,
    classes: Vec<u32>,
    superblocks: Vec<Superblock>,
    /// Free superblocks, in offset order (the lowest is taken first).
    free_superblocks: BTreeSet<u32>,
    /// Per class: partially used superblocks by (free slots, index).
    partial: Vec<BTreeSet<(u16, u32)>>,
    used_bytes: u64,
    /// Superblocks below this one may be handed out (the arena's memory is
    /// made resident from the start up; see [`SlabAllocator::unavailable`]).
    available: u32,
}

/// Error: nothing fits right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no free block of {0} bytes")]
pub struct Exhausted(pub u32);

impl SlabAllocator {
    /// An allocator for `capacity` bytes in superblocks of `superblock`
    /// bytes (a multiple of [`PAGE`], at most 256 MiB); the capacity is
    /// rounded down to whole superblocks.
    pub fn new(capacity: u64, superblock: u32) -> SlabAllocator {
        assert!(
            superblock >= PAGE && superblock.is_multiple_of(PAGE),
            "superblock {superblock}"
        );
        let count = (capacity / superblock as u64) as u32;
        SlabAllocator {
            superblock,
            classes: size_classes(superblock),
            superblocks: (0..count)
                .map(|_| Superblock {
                    class: None,
                    free: Vec::new(),
                })
                .collect(),
            free_superblocks: (0..count).collect(),
            partial: vec![BTreeSet::new(); size_classes(superblock).len()],
            used_bytes: 0,
            available: count,
        }
    }

    /// Like [`SlabAllocator::new`], with nothing to hand out until
    /// [`SlabAllocator::make_available`] says which memory is ready.
    pub fn unavailable(capacity: u64, superblock: u32) -> SlabAllocator {
        let mut alloc = SlabAllocator::new(capacity, superblock);
        alloc.free_superblocks.clear();
        alloc.available = 0;
        alloc
    }

    /// Lets the superblocks of the first `bytes` of the arena be handed out
    /// (those not in use already: see [`SlabAllocator::claim`]).
    pub fn make_available(&mut self, bytes: u64) {
        let upto = ((bytes / self.superblock as u64) as u32).min(self.superblocks.len() as u32);
        let superblocks = &self.superblocks;
        self.free_superblocks
            .extend((self.available..upto).filter(|&sb| superblocks[sb as usize].class.is_none()));
        self.available = self.available.max(upto);
    }

    /// Marks the block of `size` bytes (a class size) at `offset` as
    /// allocated, as [`SlabAllocator::alloc`] would have handed it out:
    /// for memory that already holds data (an arena kept across a restart).
    /// A superblock claimed this way is in use at once, available or not;
    /// its other blocks of that class may be handed out before the memory
    /// behind them is made resident (they are then faulted in on first
    /// use). An error if the block is not one this allocator could have
    /// made, or overlaps one in use.
    pub fn claim(&mut self, offset: u64, size: u32) -> Result<Block, String> {
        let class = self
            .classes
            .iter()
            .position(|&c| c == size)
            .ok_or_else(|| format!("{size} bytes is not a block size"))? as u8;
        let sb = offset / self.superblock as u64;
        if sb >= self.superblocks.len() as u64 {
            return Err(format!("offset {offset} is outside the arena"));
        }
        let sb = sb as u32;
        let within = offset % self.superblock as u64;
        if !within.is_multiple_of(size as u64) {
            return Err(format!("offset {offset} is not on a {size}-byte block boundary"));
        }
        let slot = (within / size as u64) as u16;
        let slots = self.slots(class);
        let state = &mut self.superblocks[sb as usize];
        let before = match state.class {
            None => {
                self.free_superblocks.remove(&sb);
                state.class = Some(class);
                state.free = (0..slots).rev().collect();
                None
            }
            Some(c) if c == class => Some(state.free.len() as u16),
            Some(_) => return Err(format!("the block at {offset} overlaps one of another size")),
        };
        let Some(at) = state.free.iter().position(|&s| s == slot) else {
            return Err(format!("the block at {offset} is in use already"));
        };
        state.free.remove(at);
        let after = state.free.len() as u16;
        if let Some(before) = before.filter(|&b| b > 0) {
            self.partial[class as usize].remove(&(before, sb));
        }
        if after > 0 {
            self.partial[class as usize].insert((after, sb));
        }
        self.used_bytes += size as u64;
        Ok(Block { offset, size, class })
    }

    /// Bytes that may be handed out (all of them once the arena is ready).
    pub fn available(&self) -> u64 {
        self.available as u64 * self.superblock as u64
    }

    /// Bytes under management.
    pub fn capacity(&self) -> u64 {
        self.superblocks.len() as u64 * self.superblock as u64
    }

    /// Bytes in allocated blocks (class sizes, padding included).
    pub fn used(&self) -> u64 {
        self.used_bytes
    }

    /// The largest block there is.
    pub fn max_block(&self) -> u32 {
        self.superblock
    }

    /// The size a request for `size` bytes is served with, if it can be.
    pub fn class_size(&self, size: u32) -> Option<u32> {
        self.class_of(size).map(|c| self.classes[c as usize])
    }

    fn class_of(&self, size: u32) -> Option<u8> {
        let size = size.max(1);
        self.classes.iter().position(|&c| c >= size).map(|c| c as u8)
    }

    fn slots(&self, class: u8) -> u16 {
        (self.superblock / self.classes[class as usize]) as u16
    }

    /// Allocates a block of at least `size` bytes.
    pub fn alloc(&mut self, size: u32) -> Result<Block, Exhausted> {
        let class = self.class_of(size).ok_or(Exhausted(size))?;
        let class_size = self.classes[class as usize];
        let sb = match self.partial[class as usize].iter().next().copied() {
            Some(entry) => {
                self.partial[class as usize].remove(&entry);
                entry.1
            }
            None => {
                let sb = self.free_superblocks.pop_first().ok_or(Exhausted(size))?;
                let slots = self.slots(class);
                let state = &mut self.superblocks[sb as usize];
                state.class = Some(class);
                state.free = (0..slots).rev().collect();
                sb
            }
        };
        let state = &mut self.superblocks[sb as usize];
        let Some(slot) = state.free.pop() else {
            unreachable!("a partial or fresh superblock has a free slot");
        };
        if !state.free.is_empty() {
            self.partial[class as usize].insert((state.free.len() as u16, sb));
        }
        self.used_bytes += class_size as u64;
        Ok(Block {
            offset: sb as u64 * self.superblock as u64 + slot as u64 * class_size as u64,
            size: class_size,
            class,
        })
    }

    /// Returns a block.
    ///
    /// # Panics
    /// If the block was not allocated here (a bug in the caller).
    pub fn free(&mut self, block: Block) {
        let class_size = self.classes[block.class as usize];
        let sb = (block.offset / self.superblock as u64) as u32;
        let slot = ((block.offset % self.superblock as u64) / class_size as u64) as u16;
        let slots = self.slots(block.class);
        let state = &mut self.superblocks[sb as usize];
        assert_eq!(
            state.class,
            Some(block.class),
            "block {block:?} freed into the wrong superblock"
        );
        debug_assert!(!state.free.contains(&slot), "double free of {block:?}");
        let before = state.free.len() as u16;
        state.free.push(slot);
        self.used_bytes -= class_size as u64;
        if before > 0 {
            self.partial[block.class as usize].remove(&(before, sb));
        }
        if before + 1 == slots {
            state.class = None;
            state.free = Vec::new();
            self.free_superblocks.insert(sb);
        } else {
            self.partial[block.class as usize].insert((before + 1, sb));
        }
    }

    /// `count` whole superblocks at consecutive offsets, the lowest run of
    /// them that is free; `None` if no run is that long now.
    pub fn alloc_run(&mut self, count: u32) -> Option<Vec<Block>> {
        let run = self.free_run(count)?;
        let class = (self.classes.len() - 1) as u8;
        let mut blocks = Vec::with_capacity(count as usize);
        for sb in run {
            self.free_superblocks.remove(&sb);
            let state = &mut self.superblocks[sb as usize];
            state.class = Some(class);
            state.free = Vec::new();
            self.used_bytes += self.superblock as u64;
            blocks.push(Block {
                offset: sb as u64 * self.superblock as u64,
                size: self.superblock,
                class,
            });
        }
        Some(blocks)
    }

    /// The lowest run of `count` consecutive free superblocks.
    fn free_run(&self, count: u32) -> Option<Range<u32>> {
        if count == 0 {
            return None;
        }
        let mut start = None;
        let mut prev = None;
        for &sb in &self.free_superblocks {
            if prev.is_none_or(|p: u32| p + 1 != sb) {
                start = Some(sb);
            }
            prev = Some(sb);
            let first = start.unwrap_or(sb);
            if sb - first + 1 == count {
                return Some(first..sb + 1);
            }
        }
        None
    }

    /// The largest request that would succeed now.
    pub fn largest_allocatable(&self) -> u32 {
        if !self.free_superblocks.is_empty() {
            return self.superblock;
        }
        self.partial
            .iter()
            .enumerate()
            .rev()
            .find(|(_, set)| !set.is_empty())
            .map_or(0, |(class, _)| self.classes[class])
    }
}

/// Block sizes: each power of two from [`PAGE`] and one and a half times
/// it where that is a multiple of [`PAGE`] (4, 8, 12, 16, 24, 32, 48, 64,
/// ... KiB), up to and including `superblock`. Above 8 KiB a block is at
/// most a third padding.
fn size_classes(superblock: u32) -> Vec<u32> {
    let mut classes = Vec::new();
    let mut power = PAGE;
    while power < superblock {
        classes.push(power);
        let between = power + power / 2;
        if between.is_multiple_of(PAGE) && between < superblock {
            classes.push(between);
        }
        power *= 2;
    }
    classes.push(superblock);
    classes
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u32 = 1 << 20;

    #[test]
    fn classes_are_page_multiples_with_bounded_padding() {
        let classes = size_classes(MIB);
        assert_eq!(&classes[..6], &[4096, 8192, 12288, 16384, 24576, 32768]);
        assert_eq!(*classes.last().unwrap(), MIB);
        for pair in classes.windows(2) {
            assert!(pair[0] % PAGE == 0 && pair[0] < pair[1]);
        }
        // A request just above a class of 8 KiB or more gets the next one:
        // at most a third of it is padding.
        for pair in classes[1..].windows(2) {
            assert!(
                (pair[1] - pair[0]) as f64 / pair[1] as f64 <= 1.0 / 3.0 + 1e-9,
                "{pair:?}"
            );
        }
    }

    #[test]
    fn claimed_blocks_are_in_use_and_the_rest_is_handed_out_around_them() {
        let mut a = SlabAllocator::unavailable(8 * MIB as u64, MIB);
        let whole = a.claim(3 * MIB as u64, MIB).unwrap();
        let small = a.claim(5 * MIB as u64 + 8192, 8192).unwrap();
        assert_eq!(a.used(), MIB as u64 + 8192);
        assert!(a.claim(3 * MIB as u64, MIB).unwrap_err().contains("in use"));
        assert!(a.claim(5 * MIB as u64 + 8192, 8192).unwrap_err().contains("in use"));
        assert!(a.claim(5 * MIB as u64, MIB).unwrap_err().contains("another size"));
        assert!(a.claim(4096, 8192).unwrap_err().contains("boundary"));
        assert!(a.claim(0, 5000).unwrap_err().contains("not a block size"));
        assert!(a.claim(8 * MIB as u64, MIB).unwrap_err().contains("outside"));
        a.make_available(8 * MIB as u64);
        // Six whole superblocks are left, none of them the claimed ones.
        let rest: Vec<Block> = (0..6).map(|_| a.alloc(MIB).unwrap()).collect();
        assert!(
            rest.iter()
                .all(|b| b.offset != whole.offset && b.offset != 5 * MIB as u64)
        );
        assert_eq!(a.alloc(MIB), Err(Exhausted(MIB)));
        // The claimed small block's superblock serves its class.
        let next = a.alloc(8192).unwrap();
        assert_eq!(next.offset / MIB as u64, 5);
        assert_ne!(next.offset, small.offset);
        for b in rest.into_iter().chain([whole, small, next]) {
            a.free(b);
        }
        assert_eq!(a.used(), 0);
        assert_eq!(a.alloc_run(8).map(|r| r.len()), Some(8));
    }

    #[test]
    fn blocks_do_not_overlap_and_superblocks_come_back() {
        let mut a = SlabAllocator::new(8 * MIB as u64, MIB);
        let small: Vec<Block> = (0..300).map(|_| a.alloc(5000).unwrap()).collect();
        assert!(small.iter().all(|b| b.size == 8192 && b.offset % PAGE as u64 == 0));
        let mut offsets: Vec<u64> = small.iter().map(|b| b.offset).collect();
        offsets.sort();
        offsets.dedup();
        assert_eq!(offsets.len(), 300);
        // 300 blocks of 8 KiB fill two superblocks and part of a third.
        assert_eq!(a.largest_allocatable(), MIB);
        let big: Vec<Block> = (0..5).map(|_| a.alloc(MIB).unwrap()).collect();
        assert_eq!(a.alloc(MIB), Err(Exhausted(MIB)));
        assert_eq!(a.largest_allocatable(), 8192);
        for b in small {
            a.free(b);
        }
        assert_eq!(a.largest_allocatable(), MIB);
        for b in big {
            a.free(b);
        }
        assert_eq!(a.used(), 0);
        assert_eq!(a.alloc(MIB + 1), Err(Exhausted(MIB + 1)));
    }

    #[test]
    fn only_memory_made_available_is_handed_out() {
        let sb = 1 << 20;
        let mut a = SlabAllocator::unavailable(8 * sb as u64, sb);
        assert_eq!(a.alloc(4096), Err(Exhausted(4096)));
        assert_eq!(a.alloc_run(1), None);
        a.make_available(2 * sb as u64 + 5);
        assert_eq!(a.available(), 2 * sb as u64);
        let run = a.alloc_run(2).expect("the first two superblocks");
        assert_eq!(run[0].offset, 0);
        assert_eq!(a.alloc(sb), Err(Exhausted(sb)));
        a.make_available(8 * sb as u64);
        a.make_available(3 * sb as u64);
        assert_eq!(a.available(), 8 * sb as u64, "never shrinks");
        let rest: Vec<Block> = (0..6).map(|_| a.alloc(sb).unwrap()).collect();
        assert!(rest.iter().all(|b| b.offset >= 2 * sb as u64));
        assert_eq!(a.alloc(sb), Err(Exhausted(sb)));
    }

    #[test]
    fn a_run_is_consecutive_superblocks_and_comes_back_whole() {
        let mut a = SlabAllocator::new(8 * MIB as u64, MIB);
        let run = a.alloc_run(3).unwrap();
        let offsets: Vec<u64> = run.iter().map(|b| b.offset).collect();
        assert_eq!(offsets, [0, MIB as u64, 2 * MIB as u64]);
        assert_eq!(a.used(), 3 * MIB as u64);
        // Every other superblock taken: free ones, but no run of two.
        let singles: Vec<Block> = (0..5).map(|_| a.alloc(MIB).unwrap()).collect();
        for b in singles.iter().skip(1).step_by(2) {
            a.free(*b);
        }
        assert!(a.alloc_run(2).is_none());
        assert!(a.alloc_run(1).is_some());
        for b in run {
            a.free(b);
        }
        assert_eq!(a.alloc_run(3).unwrap()[0].offset, 0, "the lowest run is taken");
        assert!(a.alloc_run(0).is_none());
    }

    /// 1,000,000 random alloc/free cycles of mixed sizes between 10% and
    /// 95% fill: blocks never overlap, the accounting holds, and whenever at
    /// least FRAGMENTATION_BOUND of the arena is free a superblock can be
    /// allocated. Prints the worst case seen.
    #[test]
    fn a_million_cycles_of_churn_keep_the_largest_block_available() {
        let capacity = 256 * MIB as u64;
        let mut a = SlabAllocator::new(capacity, MIB);
        let mut live: Vec<Block> = Vec::new();
        // One bit per page: set while a live block covers it.
        let mut pages = vec![false; (capacity / PAGE as u64) as usize];
        let mut rng: u64 = 0x5EED_1234_ABCD_0001;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut filling = true;
        let mut worst_free_without_superblock = 0.0f64;
        let mut checks = 0u64;
        for cycle in 0..1_000_000u64 {
            let fill = a.used() as f64 / capacity as f64;
            if fill > 0.95 {
                filling = false;
            } else if fill < 0.10 {
                filling = true;
            }
            let grow = if filling { next() % 10 < 7 } else { next() % 10 < 3 };
            if grow || live.is_empty() {
                // Mixed sizes: tails and small shards (4 KiB to 1 MiB) and whole chunks.
                let r = next();
                let size = match r % 4 {
                    0 => MIB,
                    1 => PAGE * (1 + (r >> 8) as u32 % 16),
                    _ => 1 + (r >> 8) as u32 % MIB,
                };
                match a.alloc(size) {
                    Ok(block) => {
                        assert!(block.size >= size);
                        // No overlap with any live block: check the pages it covers.
                        let first = (block.offset / PAGE as u64) as usize;
                        for page in &mut pages[first..first + (block.size / PAGE) as usize] {
                            assert!(!*page, "cycle {cycle}: {block:?} overlaps a live block");
                            *page = true;
                        }
                        live.push(block);
                    }
                    Err(_) => filling = false,
                }
            } else {
                let i = (next() % live.len() as u64) as usize;
                let block = live.swap_remove(i);
                let first = (block.offset / PAGE as u64) as usize;
                pages[first..first + (block.size / PAGE) as usize].fill(false);
                a.free(block);
            }
            let free = 1.0 - a.used() as f64 / capacity as f64;
            if a.largest_allocatable() < MIB {
                worst_free_without_superblock = worst_free_without_superblock.max(free);
                assert!(
                    free < FRAGMENTATION_BOUND,
                    "cycle {cycle}: {:.1}% free but no superblock",
                    free * 100.0
                );
            }
            checks += 1;
        }
        let in_blocks: u64 = live.iter().map(|b| b.size as u64).sum();
        assert_eq!(in_blocks, a.used());
        eprintln!(
            "{checks} cycles: largest block unavailable at most with {:.1}% of the arena free (bound {:.0}%)",
            worst_free_without_superblock * 100.0,
            FRAGMENTATION_BOUND * 100.0
        );
    }

    /// Shards of 2 to 16 chunks asking for runs while small blocks and
    /// single chunks come and go, the arena filling to 95% and draining to
    /// 10% again and again: how often a run is found, by how full the arena
    /// is. Runs never overlap other blocks, and once everything is freed
    /// the whole arena is one run again.
    #[test]
    fn runs_under_churn_are_measured() {
        let superblocks = 256u32;
        let capacity = superblocks as u64 * MIB as u64;
        let mut a = SlabAllocator::new(capacity, MIB);
        let mut live: Vec<Vec<Block>> = Vec::new();
        let mut pages = vec![false; (capacity / PAGE as u64) as usize];
        let mut rng: u64 = 0x0C0F_FEE0_1234_5678;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // Per tenth of fill: (runs asked, runs found).
        let mut by_fill = [(0u64, 0u64); 10];
        let mut filling = true;
        for _ in 0..200_000u64 {
            let fill = a.used() as f64 / capacity as f64;
            if fill > 0.95 {
                filling = false;
            } else if fill < 0.10 {
                filling = true;
            }
            let grow = if filling { next() % 10 < 7 } else { next() % 10 < 3 };
            if grow || live.is_empty() {
                let r = next();
                let blocks = match r % 3 {
                    0 => {
                        let count = 2 + (r >> 8) as u32 % 15;
                        let slot = &mut by_fill[((fill * 10.0) as usize).min(9)];
                        slot.0 += 1;
                        match a.alloc_run(count) {
                            Some(run) => {
                                slot.1 += 1;
                                for pair in run.windows(2) {
                                    assert_eq!(pair[0].offset + MIB as u64, pair[1].offset);
                                }
                                Some(run)
                            }
                            None => {
                                // Scattered: one by one, or none at all.
                                let mut taken = Vec::new();
                                while taken.len() < count as usize {
                                    match a.alloc(MIB) {
                                        Ok(block) => taken.push(block),
                                        Err(_) => break,
                                    }
                                }
                                if taken.len() < count as usize {
                                    taken.drain(..).for_each(|b| a.free(b));
                                    None
                                } else {
                                    Some(taken)
                                }
                            }
                        }
                    }
                    1 => a.alloc(MIB).ok().map(|b| vec![b]),
                    _ => a.alloc(1 + (r >> 8) as u32 % MIB).ok().map(|b| vec![b]),
                };
                match blocks {
                    Some(blocks) => {
                        for block in &blocks {
                            let first = (block.offset / PAGE as u64) as usize;
                            for page in &mut pages[first..first + (block.size / PAGE) as usize] {
                                assert!(!*page, "{block:?} overlaps a live block");
                                *page = true;
                            }
                        }
                        live.push(blocks);
                    }
                    None => filling = false,
                }
            } else {
                let i = (next() % live.len() as u64) as usize;
                for block in live.swap_remove(i) {
                    let first = (block.offset / PAGE as u64) as usize;
                    pages[first..first + (block.size / PAGE) as usize].fill(false);
                    a.free(block);
                }
            }
        }
        let report: Vec<String> = by_fill
            .iter()
            .enumerate()
            .filter(|(_, (asked, _))| *asked > 0)
            .map(|(tenth, (asked, found))| {
                format!(
                    "{}-{}% full: {:.0}%",
                    tenth * 10,
                    tenth * 10 + 10,
                    *found as f64 * 100.0 / *asked as f64
                )
            })
            .collect();
        eprintln!("runs of 2-16 chunks found contiguous: {}", report.join(", "));
        // Below a fifth full, a run is found nearly always.
        let (asked, found) = by_fill[1];
        assert!(found * 10 >= asked * 9, "10-20% full: {found} of {asked}");
        for blocks in live.drain(..) {
            for block in blocks {
                a.free(block);
            }
        }
        assert_eq!(a.used(), 0);
        assert_eq!(a.alloc_run(superblocks).map(|r| r.len()), Some(superblocks as usize));
    }
}
