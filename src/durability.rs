//! How a file is made durable: the one seam between the audit writer / the latch and
//! `fdatasync(2)` / `fsync(2)`. The shipped binary only ever uses [`Os`] (no flag, no environment
//! variable selects anything else); `benches/lockdown.rs` plugs in a slower, counting one to
//! measure the daemon on a slow disk. Owns no file and decides nothing about what is written.

use std::fs::File;
use std::sync::Arc;

/// Makes written bytes durable. Implementations must do at least what the OS calls do.
pub trait Durability: Send + Sync + std::fmt::Debug {
    /// `fdatasync(2)`: the data and the size needed to read it.
    fn sync_data(&self, file: &File) -> std::io::Result<()>;
    /// `fsync(2)`: data and metadata (a new file, a directory entry).
    fn sync_all(&self, file: &File) -> std::io::Result<()>;
}

/// The operating system's own calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct Os;

impl Durability for Os {
    fn sync_data(&self, file: &File) -> std::io::Result<()> {
        file.sync_data()
    }

    fn sync_all(&self, file: &File) -> std::io::Result<()> {
        file.sync_all()
    }
}

/// The default: [`Os`].
pub fn os() -> Arc<dyn Durability> {
    Arc::new(Os)
}
