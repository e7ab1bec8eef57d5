//! Writes a restored image from front to back, into a regular file or onto a block device.
//!
//! Decoded blobs arrive in the order their reads complete, which is close to the image's order
//! but not the same. Writing each wherever it belongs as it arrives scatters writes over a
//! fresh file, and on tmpfs and these VMs that made identical restores vary threefold in time.
//! [`write_in_order`] instead keeps the blobs that arrive early, up to [`REORDER_WINDOW`] bytes
//! of image ahead of the next unwritten byte, and hands the image to its [`Target`] in order. A
//! blob that arrives even further ahead is written at once in its place (rare with packs
//! written in image order; it keeps memory bounded whatever the layout). A chunk the image
//! repeats is read back from its first place, which is written by then.
//!
//! [`FileTarget`] writes each chunk with one `pwrite` and leaves zero chunks out, so the file
//! stays sparse (it must be fresh or truncated). [`DeviceTarget`] assembles aligned windows of
//! [`WINDOW`] bytes and writes each with one `O_DIRECT` write (through the page cache, a fresh
//! loop device was several times slower and the dirty pages counted against the pod's memory);
//! a window of zeros is zeroed by the device itself where it can (`fallocate` punching a hole:
//! the device's write-zeroes), else written only where the device does not read as zeros
//! already.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::id::Id;
use crate::pack_reader::{Decoded, Deliveries};
use crate::packer::is_zero;
use crate::progress::Progress;
use crate::restore_plan::{Plan, Source};
use crate::{Error, Result};

/// How far ahead of the next unwritten byte decoded blobs are held back to be written in
/// order. Held blobs count against the reader's budget
/// ([`crate::pack_reader::ReaderOptions::budget`]): from S3 (48 MiB) the rest of the budget
/// keeps reads in flight; from a directory (16 MiB) reads are quick enough that the lowest
/// read, which is always started, keeps the writer busy.
pub const REORDER_WINDOW: u64 = 16 << 20;

/// Bytes of a block device written in one go: large aligned writes are what devices (and loop
/// devices over files) take fastest, and `O_DIRECT` needs the alignment.
pub const WINDOW: u64 = 8 << 20;
/// Buffer and offset alignment for `O_DIRECT` (a multiple of every logical block size in use).
const ALIGN: usize = 4096;

/// Where [`write_in_order`] puts an image.
pub trait Target {
    /// `data` at `start`, right after everything put so far.
    fn put(&mut self, start: u64, data: &[u8]) -> Result<()>;
    /// `len` zero bytes at `start`, right after everything put so far. By default nothing is
    /// written: a fresh file leaves a hole, which reads as zeros.
    fn put_zeros(&mut self, _start: u64, _len: u64) -> Result<()> {
        Ok(())
    }
    /// `data` at `start`, far ahead of what was put so far. Returns whether it stays there:
    /// otherwise it is read back and put again when its turn comes. By default it is put in
    /// its place at once, and stays.
    fn put_early(&mut self, start: u64, data: &[u8]) -> Result<bool> {
        self.put(start, data)?;
        Ok(true)
    }
    /// Reads bytes that were put (or put early) before.
    fn read_back(&mut self, start: u64, buf: &mut [u8]) -> Result<()>;
    /// Writes what is still buffered and syncs. Returns the bytes written.
    fn finish(&mut self) -> Result<u64>;
}

/// Puts every piece of `plan` into `target` in image order, taking the decoded blobs from
/// `deliveries` and holding those that arrive early up to `window` bytes of image ahead (0:
/// every blob is put in its place as it arrives). Returns the target's bytes written.
pub fn write_in_order(
    target: &mut dyn Target,
    plan: &Plan,
    deliveries: &Deliveries,
    window: u64,
    progress: &dyn Progress,
) -> Result<u64> {
    let pieces = &plan.pieces;
    let mut held: HashMap<usize, Decoded> = HashMap::new();
    let mut early: HashMap<usize, Early> = HashMap::new();
    let mut zero: HashSet<Id> = HashSet::new();
    let mut copy = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        let read_back_from = match p.source {
            Source::Copy { .. } if zero.contains(&p.id) => {
                target.put_zeros(p.start, p.len)?;
                None
            }
            Source::Copy { piece } => Some(pieces[piece].start),
            Source::Fetch { .. } => match early.remove(&i) {
                Some(Early::Stayed) => None,
                Some(Early::Zero) => {
                    target.put_zeros(p.start, p.len)?;
                    None
                }
                Some(Early::ReadBack) => Some(p.start),
                None => {
                    let d = loop {
                        if let Some(d) = held.remove(&i) {
                            break d;
                        }
                        let d = deliveries.next()?;
                        if d.piece == i {
                            break d;
                        }
                        let q = pieces.get(d.piece).ok_or_else(|| {
                            Error::Invalid(format!("a blob for piece {} of the image", d.piece))
                        })?;
                        if q.start >= p.start + window {
                            let how = if d.zero {
                                zero.insert(q.id);
                                Early::Zero
                            } else if target.put_early(q.start, &d.data)? {
                                Early::Stayed
                            } else {
                                Early::ReadBack
                            };
                            early.insert(d.piece, how);
                        } else {
                            held.insert(d.piece, d);
                        }
                    };
                    if d.zero {
                        zero.insert(p.id);
                        target.put_zeros(p.start, p.len)?;
                    } else {
                        target.put(p.start, &d.data)?;
                    }
                    None
                }
            },
        };
        if let Some(from) = read_back_from
            && p.len > 0
        {
            copy.resize(p.len as usize, 0);
            target.read_back(from, &mut copy)?;
            target.put(p.start, &copy)?;
        }
        progress.add_done(p.len);
    }
    target.finish()
}

/// What became of a blob that arrived far ahead of its turn.
enum Early {
    /// Written in its place for good.
    Stayed,
    /// All zeros: nothing written yet.
    Zero,
    /// Written in its place, to be read back and put again in its turn.
    ReadBack,
}

/// A fresh (or truncated) regular file that reads as zeros where nothing is written.
pub struct FileTarget<'a> {
    file: &'a File,
    path: &'a Path,
    written: u64,
}

impl<'a> FileTarget<'a> {
    /// Writes into `file`, named `path` in messages.
    pub fn new(file: &'a File, path: &'a Path) -> FileTarget<'a> {
        FileTarget {
            file,
            path,
            written: 0,
        }
    }
}

impl Target for FileTarget<'_> {
    fn put(&mut self, start: u64, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, start)
            .map_err(|e| Error::io(self.path, e))?;
        self.written += data.len() as u64;
        Ok(())
    }
    fn read_back(&mut self, start: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, start)
            .map_err(|e| Error::io(self.path, e))
    }
    fn finish(&mut self) -> Result<u64> {
        self.file.sync_all().map_err(|e| Error::io(self.path, e))?;
        Ok(self.written)
    }
}

/// A zeroed buffer of `len` bytes whose start is aligned for `O_DIRECT`.
struct AlignedBuf {
    raw: Vec<u8>,
    at: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + ALIGN];
        let at = raw.as_ptr().align_offset(ALIGN);
        assert!(at < ALIGN, "cannot align a buffer");
        AlignedBuf { raw, at, len }
    }
    fn get(&mut self, len: usize) -> &mut [u8] {
        &mut self.raw[self.at..self.at + len.min(self.len)]
    }
}

/// A block device, written in aligned windows of [`WINDOW`] bytes.
pub struct DeviceTarget {
    path: PathBuf,
    buffered: File,
    direct: Option<File>,
    size: u64,
    /// The window being assembled: its first byte, and how much of it is filled.
    win_start: u64,
    filled: usize,
    buf: AlignedBuf,
    check: AlignedBuf,
    can_zero: bool,
    written: u64,
}

impl DeviceTarget {
    /// Opens the device `path` for an image of `size` bytes (it must hold that many).
    pub fn open(path: &Path, size: u64) -> Result<DeviceTarget> {
        let buffered = open_device(path, size, false)?;
        let direct = open_device(path, size, true).ok();
        Ok(DeviceTarget {
            path: path.to_path_buf(),
            buffered,
            direct,
            size,
            win_start: 0,
            filled: 0,
            buf: AlignedBuf::new(WINDOW as usize),
            check: AlignedBuf::new(WINDOW as usize),
            can_zero: true,
            written: 0,
        })
    }

    fn io(&self, e: std::io::Error) -> Error {
        Error::io(&self.path, e)
    }

    /// Copies `data` (or zeros, for `None`) into the window, writing each window as it fills.
    fn fill(&mut self, start: u64, len: u64, data: Option<&[u8]>) -> Result<()> {
        if start != self.win_start + self.filled as u64 {
            return Err(Error::Invalid(format!(
                "{}: image bytes at {start} put out of order",
                self.path.display()
            )));
        }
        let mut done = 0u64;
        while done < len {
            let room = (WINDOW as usize - self.filled) as u64;
            let n = room.min(len - done) as usize;
            let dst = &mut self.buf.get(WINDOW as usize)[self.filled..self.filled + n];
            match data {
                Some(d) => dst.copy_from_slice(&d[done as usize..done as usize + n]),
                None => dst.fill(0),
            }
            self.filled += n;
            done += n as u64;
            if self.filled == WINDOW as usize || self.win_start + self.filled as u64 == self.size {
                self.write_window()?;
            }
        }
        Ok(())
    }

    /// Writes the assembled window and starts the next one.
    fn write_window(&mut self) -> Result<()> {
        let (ws, len) = (self.win_start, self.filled);
        self.win_start += len as u64;
        self.filled = 0;
        if len == 0 {
            return Ok(());
        }
        let aligned = len.is_multiple_of(ALIGN);
        let zeros = is_zero(self.buf.get(len));
        if zeros && aligned && self.can_zero {
            // The device's own write-zeroes (the kernel never falls back to writing zero
            // pages here): cheap, and thin-provisioned storage may satisfy it by unmapping.
            let mode =
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
            match rustix::fs::fallocate(&self.buffered, mode, ws, len as u64) {
                Ok(()) => return Ok(()),
                Err(_) => self.can_zero = false,
            }
        }
        let dev = match &self.direct {
            Some(d) if aligned => d,
            _ => &self.buffered,
        };
        if zeros {
            let old = self.check.get(len);
            dev.read_exact_at(old, ws)
                .map_err(|e| Error::io(&self.path, e))?;
            if is_zero(old) {
                return Ok(());
            }
        }
        let window = self.buf.get(len);
        let r = dev.write_all_at(window, ws).or_else(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) && self.direct.is_some() {
                self.buffered.write_all_at(window, ws)
            } else {
                Err(e)
            }
        });
        r.map_err(|e| Error::io(&self.path, e))?;
        self.written += len as u64;
        Ok(())
    }
}

impl Target for DeviceTarget {
    fn put(&mut self, start: u64, data: &[u8]) -> Result<()> {
        self.fill(start, data.len() as u64, Some(data))
    }
    fn put_zeros(&mut self, start: u64, len: u64) -> Result<()> {
        self.fill(start, len, None)
    }
    fn put_early(&mut self, start: u64, data: &[u8]) -> Result<bool> {
        // Written now through the page cache; its window reads it back when assembled.
        self.buffered
            .write_all_at(data, start)
            .map_err(|e| self.io(e))?;
        Ok(false)
    }
    fn read_back(&mut self, start: u64, buf: &mut [u8]) -> Result<()> {
        // What lies in the window being assembled is read from it, the rest from the device
        // (through the page cache, which `O_DIRECT` writes keep coherent).
        let (ws, we) = (self.win_start, self.win_start + self.filled as u64);
        let mut at = start;
        let end = start + buf.len() as u64;
        while at < end {
            let dst = (at - start) as usize;
            if at >= ws && at < we {
                let n = (end.min(we) - at) as usize;
                let from = (at - ws) as usize;
                buf[dst..dst + n].copy_from_slice(&self.buf.get(WINDOW as usize)[from..from + n]);
                at += n as u64;
            } else {
                let stop = if at < ws { end.min(ws) } else { end };
                let n = (stop - at) as usize;
                self.buffered
                    .read_exact_at(&mut buf[dst..dst + n], at)
                    .map_err(|e| Error::io(&self.path, e))?;
                at += n as u64;
            }
        }
        Ok(())
    }
    fn finish(&mut self) -> Result<u64> {
        self.write_window()?;
        if let Some(d) = &self.direct {
            d.sync_all().map_err(|e| self.io(e))?;
        }
        self.buffered.sync_all().map_err(|e| self.io(e))?;
        Ok(self.written)
    }
}

/// Opens a block device for writing, checking it holds `size` bytes; with `direct`, bypassing
/// the page cache (`O_DIRECT`).
fn open_device(target: &Path, size: u64, direct: bool) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    let mut f = o.open(target).map_err(|e| Error::io(target, e))?;
    let dev_size = f.seek(SeekFrom::End(0)).map_err(|e| Error::io(target, e))?;
    if dev_size < size {
        return Err(Error::TargetTooSmall {
            target: target.to_path_buf(),
            size: dev_size,
            needed: size,
        });
    }
    Ok(f)
}
