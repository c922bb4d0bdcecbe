//! The data path: streams in, packs out (backup), and back (restore).
//!
//! Backup stages, each on its own thread(s), connected by bounded channels so
//! memory stays bounded whatever the input size:
//!
//! ```text
//! reader+chunker ──▶ N hash/compress workers ──▶ packer (in order) ──▶ encrypt+upload (2 in flight)
//! ```

mod backup;
mod compress;
mod pack;
mod restore;

pub use self::backup::{BackupOptions, BackupSession};
pub use self::pack::{BlobDecoder, OpenPack, PackSealer, seal_pack};
pub use self::restore::{
    PackCache, Recycle, RunBuf, Sink, fetch_pack, restore_stream, restore_stream_into, restore_stream_to,
};
