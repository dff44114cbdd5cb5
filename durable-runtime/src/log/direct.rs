//! A segment's rounds written with `O_DIRECT | O_DSYNC`: one `pwrite` per round that
//! returns once the round is on stable storage, instead of a buffered write, its
//! writeback and an `fdatasync`.
//!
//! Direct I/O writes whole blocks from block-aligned memory, so the appender keeps the
//! segment's last partial block in memory and writes it again, followed by the round
//! and zeros up to the next block boundary. The block's old bytes are written again
//! unchanged, so a write torn anywhere leaves every earlier round whole; the zeros past
//! the round read as the segment's end, as the preallocated zeros do
//! ([`crate::record`]).
//!
//! Where the file system refuses `O_DIRECT` (`EINVAL`, as tmpfs did before Linux
//! 6.6), [`DirectAppender::open`] gives `None` and the writer keeps its buffered write
//! and `fdatasync`. `DURABLE_LOG_DIRECT=0` asks for that too.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Direct I/O's unit: offsets, lengths and the memory written are multiples of it.
/// (512 is the usual logical block size; 4096 also suits 4K-sector disks.)
pub(super) const BLOCK: u64 = 4096;

/// Blocks of memory kept between rounds (64 KiB); a larger round's are given back.
const KEEP_BLOCKS: usize = 16;

/// One block of aligned memory.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Block([u8; BLOCK as usize]);

/// Blocks as the bytes they hold.
fn bytes(blocks: &mut [Block]) -> &mut [u8] {
    let len = std::mem::size_of_val(blocks);
    // SAFETY: `Block` is plain bytes with no padding (`repr(C)` of one byte array), so
    // the blocks are `len` initialized, contiguous bytes, borrowed as long as they are.
    unsafe { std::slice::from_raw_parts_mut(blocks.as_mut_ptr().cast::<u8>(), len) }
}

/// Appends rounds to one segment (see the module's text).
pub struct DirectAppender {
    /// The segment opened `O_WRONLY | O_DIRECT | O_DSYNC`.
    file: File,
    /// The segment's last partial block, then room for a round.
    blocks: Vec<Block>,
    /// File offset of `blocks[0]`: the segment's end rounded down to a block.
    block_start: u64,
    /// Bytes of the partial block held at the start of `blocks`.
    tail: usize,
}

/// Whether the writer may use direct writes (`DURABLE_LOG_DIRECT=0` says no).
pub(super) fn wanted() -> bool {
    std::env::var_os("DURABLE_LOG_DIRECT").is_none_or(|v| v != "0")
}

/// The end of the blocks a round of `len` bytes written at `size` covers.
pub(super) fn padded_end(size: u64, len: usize) -> u64 {
    (size + len as u64).div_ceil(BLOCK) * BLOCK
}

impl DirectAppender {
    /// Open `path` (a segment whose records end at `size`, read through `file`) for
    /// direct writes; `None` where the file system does not take them.
    pub fn open(path: &Path, file: &File, size: u64) -> io::Result<Option<Self>> {
        if !wanted() {
            return Ok(None);
        }
        let direct = match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
            Err(e) => return Err(e),
        };
        let block_start = size / BLOCK * BLOCK;
        let tail = (size - block_start) as usize;
        let mut appender = DirectAppender {
            file: direct,
            blocks: vec![Block([0; BLOCK as usize]); KEEP_BLOCKS],
            block_start,
            tail,
        };
        file.read_exact_at(&mut bytes(&mut appender.blocks)[..tail], block_start)?;
        Ok(Some(appender))
    }

    /// Write `round` at `size` (the segment's end) and return once it is durable. On
    /// an error nothing changes here: the caller cuts the file back to `size`.
    pub fn append(&mut self, size: u64, round: &[u8]) -> io::Result<()> {
        debug_assert_eq!(size, self.block_start + self.tail as u64);
        let end = self.tail + round.len();
        let padded = (end as u64).div_ceil(BLOCK) as usize;
        if padded > self.blocks.len() {
            self.blocks.resize(padded, Block([0; BLOCK as usize]));
        }
        let buf = bytes(&mut self.blocks);
        buf[self.tail..end].copy_from_slice(round);
        let written = padded * BLOCK as usize;
        buf[end..written].fill(0);
        self.file.write_all_at(&buf[..written], self.block_start)?;
        // The new last partial block moves to the front.
        let full = end / BLOCK as usize * BLOCK as usize;
        buf.copy_within(full..end, 0);
        self.block_start += full as u64;
        self.tail = end - full;
        // A large round (an object's image) does not keep its memory.
        if self.blocks.len() > KEEP_BLOCKS {
            self.blocks.truncate(KEEP_BLOCKS);
            self.blocks.shrink_to_fit();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rounds of odd sizes, across block boundaries and a resize of the buffer, land
    /// in the file exactly as buffered appends would, after a start from a segment
    /// that already held records.
    #[test]
    fn rounds_land_as_appends_would() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        std::fs::write(&path, b"earlier records").unwrap();
        let file = File::options().read(true).write(true).open(&path).unwrap();
        let Some(mut d) = DirectAppender::open(&path, &file, 15).unwrap() else {
            // The fallback is right only where the file system refuses direct I/O.
            let refused = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
                .unwrap_err();
            assert_eq!(refused.raw_os_error(), Some(libc::EINVAL), "{refused}");
            return;
        };
        let mut expected = b"earlier records".to_vec();
        let mut size = 15u64;
        for (i, len) in [1usize, 100, 4081, 4096, 5000, 70_000, 3]
            .into_iter()
            .enumerate()
        {
            let round: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8 | 1).collect();
            d.append(size, &round).unwrap();
            expected.extend_from_slice(&round);
            size += len as u64;
            let on_disk = std::fs::read(&path).unwrap();
            assert_eq!(on_disk.len() as u64, padded_end(size, 0));
            assert_eq!(&on_disk[..expected.len()], &expected[..], "round {i}");
            assert!(on_disk[expected.len()..].iter().all(|&b| b == 0));
        }
    }

    /// A round that fails (here a full disk) changes nothing the next round relies on:
    /// once the caller cuts the file back to the segment's end, as the writer does, a
    /// later round lands right after the last good one. Mounts a small tmpfs (CI runs
    /// as root; tmpfs takes `O_DIRECT` since Linux 6.6).
    #[test]
    fn after_a_failed_round_the_next_lands_after_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill it and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(self.0)
                    .status();
            }
        }
        let _unmount = Unmount(dir.path());
        let path = dir.path().join("segment");
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let mut d = DirectAppender::open(&path, &file, 0)
            .unwrap()
            .expect("tmpfs takes O_DIRECT writes on this kernel");
        let (mut size, mut good) = (0u64, Vec::new());
        let failed = (0..100).find_map(|i| {
            let round = vec![i as u8 | 1; 10_000];
            match d.append(size, &round) {
                Ok(()) => {
                    size += round.len() as u64;
                    good.extend_from_slice(&round);
                    None
                }
                Err(e) => Some(e),
            }
        });
        let e = failed.expect("a 64 KiB disk fills within 100 rounds of 10 KB");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        file.set_len(size).unwrap();
        // The block holding the segment's end stays allocated: a small round fits.
        d.append(size, b"after").unwrap();
        good.extend_from_slice(b"after");
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[..good.len()], &good[..]);
        assert!(on_disk[good.len()..].iter().all(|&b| b == 0));
    }
}
