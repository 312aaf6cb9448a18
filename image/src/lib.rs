//! Caisson's image store.
//!
//! * [`content`]: blobs under `blobs/sha256/`, verified while written, atomic.
//! * [`archive`]: import of OCI image-layout and `docker save` archives.
//! * [`unpack`]: layer tars into overlay lower dirs, whiteouts converted,
//!   nothing allowed outside the layer root.
//! * [`layers`]: unpacked layers keyed by chain id, shared between images.
//! * [`index`]: image records, tags, lookups; [`reference`]: name normalization.
//! * [`rootfs`]: per-container overlay mounts; [`usage`]: disk usage.
//! * [`pull`]: [`Puller`], images from OCI/Docker registries, streamed to
//!   disk in parallel, verified, committed like an import.
//! * [`store`]: [`ImageStore`], the facade `caissond` uses.

pub mod archive;
pub mod content;
pub mod digest;
pub mod error;
pub mod index;
pub mod layers;
pub mod pull;
pub mod reference;
pub mod rootfs;
pub mod store;
pub mod unpack;
pub mod usage;

pub use archive::ImportOptions;
pub use digest::Digest;
pub use error::{ImageError, Result};
pub use index::{ImageRecord, LayerRecord, RunConfig};
pub use pull::{Credentials, PullReport, Puller, RegistriesConfig};
pub use reference::Reference;
pub use rootfs::Rootfs;
pub use store::{GcReport, ImageStore, ImportReport};
pub use usage::FsUsage;
