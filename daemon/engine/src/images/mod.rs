//! Images: the image store and its operations (owned by the images service).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_snapshotter::Snapshotter;

use crate::error::EngineError;
use crate::events::EventBus;

/// The image service of one storage driver.
pub struct ImageService {
    pub dir: PathBuf,
    pub snapshotter: Arc<dyn Snapshotter>,
    pub events: EventBus,
}

impl ImageService {
    /// Opens (creating if needed) the image store kept in `dir`.
    pub fn open(
        dir: &Path,
        snapshotter: Arc<dyn Snapshotter>,
        events: EventBus,
    ) -> Result<ImageService, EngineError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| EngineError::io(format!("create {}", dir.display()), e))?;
        Ok(ImageService { dir: dir.to_path_buf(), snapshotter, events })
    }
}
