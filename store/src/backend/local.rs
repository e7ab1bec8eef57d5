//! A repository in a local directory, laid out exactly as restic's local backend does.
//!
//! Writes go to a hidden temporary file in the destination folder, are fsync'ed, made
//! read-only (0400, as restic does) and renamed into place, and the folder is fsync'ed: a
//! crash leaves either the whole file or nothing (plus possibly a `.tmp-*` file, which
//! listings skip).

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Backend, FileInfo, FileType, relative_path};
use crate::{Error, Result};

/// A repository in a local directory.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    /// A backend rooted at `path` (which need not exist yet; [`Backend::create`] makes it).
    pub fn new(path: impl Into<PathBuf>) -> LocalBackend {
        LocalBackend { root: path.into() }
    }

    /// The repository folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The full path of a repository file.
    pub fn path_of(&self, t: FileType, name: &str) -> PathBuf {
        self.root.join(relative_path(t, name))
    }

    fn err(&self, path: &Path, e: std::io::Error) -> Error {
        if e.kind() == ErrorKind::NotFound {
            Error::NotFound {
                location: self.location(),
                path: path
                    .strip_prefix(&self.root)
                    .unwrap_or(path)
                    .display()
                    .to_string(),
            }
        } else {
            Error::Backend {
                location: self.location(),
                message: format!("{}: {e}", path.display()),
                retryable: false,
            }
        }
    }

    /// Opens a repository file for reading, with its size. Only a plain file is opened: the
    /// open does not wait (`O_NONBLOCK`, so a FIFO planted in the repository cannot block it)
    /// and whatever else the name leads to (a FIFO, a device, a folder) is refused as damaged.
    fn open_file(&self, t: FileType, name: &str) -> Result<(fs::File, u64)> {
        let path = self.path_of(t, name);
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| self.err(&path, e))?;
        let md = f.metadata().map_err(|e| self.err(&path, e))?;
        if !md.is_file() {
            use std::os::unix::fs::FileTypeExt;
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                "a folder"
            } else if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_block_device() || ft.is_char_device() {
                "a device"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "not a plain file"
            };
            return Err(Error::Corrupt {
                what: relative_path(t, name),
                message: format!("is {kind}, where a plain file belongs"),
            });
        }
        Ok((f, md.len()))
    }

    fn write_file(&self, path: &Path, data: &[u8]) -> std::io::Result<()> {
        let dir = path.parent().expect("repository files live in a folder");
        let name = path.file_name().expect("file name").to_string_lossy();
        let tmp = dir.join(format!(".tmp-{name}-{:016x}", rand::random::<u64>()));
        let result = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            f.set_permissions(fs::Permissions::from_mode(0o400))?;
            drop(f);
            fs::rename(&tmp, path)?;
            fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn create(&self) -> Result<()> {
        let config = self.path_of(FileType::Config, "config");
        if config.exists() {
            return Err(Error::Invalid(format!(
                "{}: a repository already exists here",
                self.location()
            )));
        }
        let mkdir = |p: &Path| {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(p)
                .map_err(|e| self.err(p, e))
        };
        mkdir(&self.root)?;
        for t in FileType::ALL {
            if t != FileType::Config {
                mkdir(&self.root.join(t.dir()))?;
            }
        }
        // restic creates all 256 pack folders up front; do the same so both see one layout.
        for i in 0..=255u8 {
            mkdir(&self.root.join("data").join(format!("{i:02x}")))?;
        }
        Ok(())
    }

    fn write(&self, t: FileType, name: &str, data: &[u8]) -> Result<()> {
        let path = self.path_of(t, name);
        match self.write_file(&path, data) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // The folder is missing (a repository made by a tool that creates folders on
                // demand, or data/xx removed by hand): create it and retry once.
                let dir = path.parent().expect("folder");
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| self.err(dir, e))?;
                self.write_file(&path, data).map_err(|e| self.err(&path, e))
            }
            Err(e) if e.kind() == ErrorKind::PermissionDenied && path.exists() => {
                // Files are immutable and named by content: an existing file is the same file.
                Ok(())
            }
            r => r.map_err(|e| self.err(&path, e)),
        }
    }

    fn read(&self, t: FileType, name: &str) -> Result<Vec<u8>> {
        self.read_at_most(t, name, u64::MAX)
    }

    fn read_at_most(&self, t: FileType, name: &str, max: u64) -> Result<Vec<u8>> {
        use std::io::Read;
        let (f, size) = self.open_file(t, name)?;
        if size > max {
            return Err(super::too_large(t, name, size, max));
        }
        let mut data = Vec::with_capacity(size as usize);
        // A file that grows meanwhile is read no further than one byte past the limit.
        f.take(max.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| self.err(&self.path_of(t, name), e))?;
        if data.len() as u64 > max {
            return Err(super::too_large(t, name, data.len() as u64, max));
        }
        Ok(data)
    }

    fn read_range(&self, t: FileType, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_range_into(t, name, offset, length, &mut buf)?;
        Ok(buf)
    }

    fn read_range_into(
        &self,
        t: FileType,
        name: &str,
        offset: u64,
        length: u64,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let path = self.path_of(t, name);
        let (f, _) = self.open_file(t, name)?;
        // Every byte is read over, so only a grown tail needs zeros first.
        buf.truncate(length as usize);
        buf.resize(length as usize, 0);
        f.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                Error::Backend {
                    location: self.location(),
                    message: format!(
                        "{}: cannot read {length} bytes at offset {offset}: the file is shorter",
                        path.display()
                    ),
                    retryable: false,
                }
            } else {
                self.err(&path, e)
            }
        })
    }

    fn stat(&self, t: FileType, name: &str) -> Result<u64> {
        let path = self.path_of(t, name);
        fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|e| self.err(&path, e))
    }

    fn list(&self, t: FileType) -> Result<Vec<FileInfo>> {
        if t == FileType::Config {
            return match self.stat(t, "config") {
                Ok(size) => Ok(vec![FileInfo {
                    name: "config".into(),
                    size,
                }]),
                Err(Error::NotFound { .. }) => Ok(vec![]),
                Err(e) => Err(e),
            };
        }
        let dir = self.root.join(t.dir());
        let mut out = Vec::new();
        let mut dirs = vec![dir.clone()];
        if t == FileType::Pack {
            dirs.clear();
            match fs::read_dir(&dir) {
                Ok(rd) => {
                    for e in rd {
                        let e = e.map_err(|e| self.err(&dir, e))?;
                        if e.file_type().map(|ft| ft.is_dir()).unwrap_or(false) {
                            dirs.push(e.path());
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(self.err(&dir, e)),
            }
        }
        for d in dirs {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(self.err(&d, e)),
            };
            for e in rd {
                let e = e.map_err(|e| self.err(&d, e))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let md = match e.metadata() {
                    Ok(m) => m,
                    Err(err) if err.kind() == ErrorKind::NotFound => continue,
                    Err(err) => return Err(self.err(&e.path(), err)),
                };
                if md.is_file() {
                    out.push(FileInfo {
                        name,
                        size: md.len(),
                    });
                }
            }
        }
        Ok(out)
    }

    fn remove(&self, t: FileType, name: &str) -> Result<()> {
        let path = self.path_of(t, name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_read_only_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let be = LocalBackend::new(dir.path().join("repo"));
        be.create().unwrap();
        let name = "ab".to_string() + &"0".repeat(62);
        be.write(FileType::Pack, &name, b"hello").unwrap();
        let p = be.path_of(FileType::Pack, &name);
        assert!(p.ends_with(format!("data/ab/{name}")));
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o400
        );
        assert_eq!(be.read(FileType::Pack, &name).unwrap(), b"hello");
        assert_eq!(be.read_range(FileType::Pack, &name, 1, 3).unwrap(), b"ell");
        assert!(be.read_range(FileType::Pack, &name, 3, 3).is_err());
        assert_eq!(be.stat(FileType::Pack, &name).unwrap(), 5);
        assert_eq!(
            be.list(FileType::Pack).unwrap(),
            vec![FileInfo {
                name: name.clone(),
                size: 5
            }]
        );
        // Writing the same immutable file again is fine.
        be.write(FileType::Pack, &name, b"hello").unwrap();
        be.remove(FileType::Pack, &name).unwrap();
        be.remove(FileType::Pack, &name).unwrap();
        assert!(matches!(
            be.read(FileType::Pack, &name),
            Err(Error::NotFound { .. })
        ));
        assert!(be.list(FileType::Snapshot).unwrap().is_empty());
        assert!(be.create().is_err() || !be.path_of(FileType::Config, "config").exists());
    }

    #[test]
    fn listing_a_missing_repository_is_empty_not_an_error() {
        let be = LocalBackend::new("/nonexistent/volbackup-test");
        assert!(be.list(FileType::Pack).unwrap().is_empty());
        assert!(be.list(FileType::Key).unwrap().is_empty());
        assert!(be.list(FileType::Config).unwrap().is_empty());
    }
}
