//! Image routes (`/images/...`).

use std::sync::Arc;

use crate::state::Engine;

/// The image routes, merged into the main router.
pub fn routes() -> axum::Router<Arc<Engine>> {
    axum::Router::new()
}
