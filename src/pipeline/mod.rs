//! `herald` (the pipeline): requests in, SMS and push out, every outcome
//! on the status topic. Its modules, in the order a record meets them:
//!
//! | stage | module |
//! |---|---|
//! | the consume loop, offsets, pauses and the hold | [`ingest`] |
//! | the per-record flow and its check order | `flow` |
//! | cancels, and the compacted topics every instance follows | `cancel`, [`follow`] |
//! | opted-out numbers and dead push tokens | [`suppression`] |
//! | quiet hours | [`quiet`] |
//! | rate limits | [`ratelimit`] |
//! | a lane per channel; text from templates | `route`, `templates` |
//! | providers | [`deliver`] |
//! | the send ledger | `ledger` |
//! | the one decision, status events, copies | [`outcome`] |
//! | Twilio's webhooks | [`receipts`] |

pub mod app;
pub(crate) mod cancel;
pub mod deliver;
pub(crate) mod flow;
pub mod follow;
pub mod ingest;
pub(crate) mod ledger;
pub(crate) mod observed;
pub mod outcome;
pub mod quiet;
pub mod ratelimit;
pub mod receipts;
pub(crate) mod route;
pub mod suppression;

pub use flow::AdmitError;
pub use crate::templates::LoadError;
pub(crate) use flow::Admitted;
pub(crate) use flow::Pipeline;
pub(crate) use flow::Resolved;
pub(crate) use flow::ToDeliver;
