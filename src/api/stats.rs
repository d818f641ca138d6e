//! What a user was sent, by channel and status, and the room left in each
//! rate-limit window.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{authorize, id, timed, Api, ApiError, ErrorBody, STORE_TIMEOUT};
use crate::api::store::{Notification, RETENTION_DAYS};
use crate::model::{Channel, Status};

/// One rate-limit window of a channel, as the rate-limit table has it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct WindowView {
    pub max: u32,
    pub length_seconds: u64,
    /// Counted in the window now.
    pub used: u32,
    pub remaining: u32,
    /// When the next slot frees up; null when one is free now.
    pub next_slot_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ChannelStats {
    pub channel: String,
    pub sent_last_hour: u32,
    /// Since midnight UTC.
    pub sent_today: u32,
    /// FAILED, DEAD_LETTERED or UNDELIVERED since midnight UTC.
    pub failed_today: u32,
    /// Scheduled, deferred, or waiting to retry.
    pub pending: u32,
    /// The limit the pipeline enforces, as it wrote it (`10/1h`, `off`);
    /// null when no pipeline of this group has written one.
    pub rate_limit: Option<String>,
    /// Empty when the channel has no limit, or it is not known.
    pub windows: Vec<WindowView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct Stats {
    pub user_id: String,
    pub at: DateTime<Utc>,
    pub channels: Vec<ChannelStats>,
}

/// How many notifications a user was sent, and how many more they may get.
#[utoipa::path(
    get,
    path = "/v1/users/{user_id}/stats",
    params(("user_id" = String, Path, description = "The requests' user_id")),
    responses((status = 200, body = Stats), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "The token lacks the scope", body = ErrorBody), (status = 503, body = ErrorBody))
)]
pub(super) async fn stats(State(api): State<Arc<Api>>, headers: HeaderMap, path: Result<Path<String>, PathRejection>) -> Result<Json<Stats>, ApiError> {
    authorize(&api, &headers, super::tokens::Scope::Read)?;
    let user_id = id("user_id", path)?;
    let now = Utc::now();
    let today = now.date_naive();
    // Every day a notification can still be pending from, and tomorrow (a
    // producer's clock ahead of herald's): one read each, side by side.
    let tomorrow = today + chrono::Days::new(1);
    let days = (0..=RETENTION_DAYS + 1).filter_map(|d| tomorrow.checked_sub_days(chrono::Days::new(d as u64)));
    let reads = futures::future::join_all(days.map(|day| timed(api.store.day(&user_id, day)))).await;
    let mut events = Vec::new();
    for read in reads {
        events.extend(read?);
    }
    let published = match tokio::time::timeout(STORE_TIMEOUT, api.limits.published(&api.pipeline_group)).await {
        Ok(Ok(limits)) => limits,
        Ok(Err(error)) => {
            tracing::warn!(message = "Reading the pipeline's rate limits failed.", %error);
            return Err(ApiError::Unavailable("the rate-limit table is unavailable".into()));
        }
        Err(_) => return Err(ApiError::Unavailable("the rate-limit table did not answer in time".into())),
    };
    let counted = match tokio::time::timeout(STORE_TIMEOUT, api.limits.load(&user_id)).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(error)) => {
            tracing::warn!(message = "Reading the rate-limit table failed.", %error);
            return Err(ApiError::Unavailable("the rate-limit table is unavailable".into()));
        }
        Err(_) => return Err(ApiError::Unavailable("the rate-limit table did not answer in time".into())),
    };
    let notifications = Notification::group(events);
    let hour_ago = now - chrono::Duration::hours(1);
    let channels = Channel::ALL
        .iter()
        .map(|&channel| {
            let mine = notifications.iter().filter(|n| n.current().channel == Some(channel));
            let (mut sent_last_hour, mut sent_today, mut failed_today, mut pending) = (0, 0, 0, 0);
            for n in mine {
                if let Some(sent) = n.history.iter().find(|e| e.status == Status::Sent) {
                    sent_last_hour += u32::from(sent.occurred_at >= hour_ago);
                    sent_today += u32::from(sent.occurred_at.date_naive() == today);
                }
                let current = n.current();
                if matches!(current.status, Status::Failed | Status::DeadLettered | Status::Undelivered) && current.occurred_at.date_naive() == today {
                    failed_today += 1;
                }
                pending += u32::from(!current.status.is_terminal());
            }
            let mut ats: Vec<DateTime<Utc>> = counted.iter().filter(|(c, _)| *c == channel).map(|(_, counted)| counted.at).collect();
            ats.sort_unstable();
            let limit = published.iter().find(|(c, _)| *c == channel).map(|(_, limit)| limit);
            let windows = limit.map_or_else(Vec::new, |l| l.windows.iter().map(|w| window(w.max, w.length, &ats, now)).collect());
            let rate_limit = limit.map(ToString::to_string);
            ChannelStats { channel: channel.symbol().into(), sent_last_hour, sent_today, failed_today, pending, rate_limit, windows }
        })
        .collect();
    Ok(Json(Stats { user_id, at: now, channels }))
}

/// A window of `max` per `length`, given the counted times (sorted).
fn window(max: u32, length: Duration, ats: &[DateTime<Utc>], now: DateTime<Utc>) -> WindowView {
    let length_c = chrono::Duration::from_std(length).unwrap_or(chrono::Duration::MAX);
    let inside: Vec<&DateTime<Utc>> = ats.iter().filter(|at| **at > now - length_c).collect();
    let used = inside.len() as u32;
    // Full: a slot frees when enough of the oldest counts leave the window.
    let next_slot_at = (used >= max && max > 0).then(|| *inside[(used - max) as usize] + length_c);
    WindowView { max, length_seconds: length.as_secs(), used, remaining: max.saturating_sub(used), next_slot_at }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn a_full_window_frees_when_its_oldest_count_leaves_it() {
        let hour = Duration::from_secs(3600);
        let ats = [at(0), at(100), at(200)];
        let w = window(3, hour, &ats, at(300));
        assert_eq!((w.used, w.remaining, w.next_slot_at), (3, 0, Some(at(3600))));
        let w = window(2, hour, &ats, at(300));
        assert_eq!((w.used, w.remaining, w.next_slot_at), (3, 0, Some(at(3700))), "two must leave for one slot");
        let w = window(5, hour, &ats, at(3650));
        assert_eq!((w.used, w.remaining, w.next_slot_at), (2, 3, None), "the first has left");
    }
}
