//! `list` and `show`: the dead letters, read whole, changing nothing.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::Offset;
use serde_json::json;

use super::{high_watermarks, read_from, Context, DlqError, Filter, Letter};
use crate::mask::Masked;
use crate::model::Request;

pub(super) async fn list(context: &Context, filter: &Filter, json: bool) -> Result<(), DlqError> {
    let mut letters: Vec<Letter> = context.all().await?.into_iter().filter(|l| l.matches(filter)).collect();
    // Oldest first, as they were dead-lettered, whatever their partition.
    letters.sort_by_key(|l| (l.at, l.message.partition(), l.message.offset()));
    quietly_on_a_closed_pipe(write_list(&letters, json))
}

/// The table or JSON lines of `letters`, on stdout.
fn write_list(letters: &[Letter], json: bool) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if json {
        for letter in letters {
            writeln!(out, "{}", letter.summary())?;
        }
        return out.flush();
    }
    const COLUMNS: [(&str, &str); 6] = [("at", "at"), ("time", "time"), ("attempts", "try"), ("code", "code"), ("channel", "chan"), ("recipient", "recipient")];
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|l| {
            let s = l.summary();
            let text = |k: &str| match &s[k] {
                serde_json::Value::String(v) => v.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => "-".to_owned(),
            };
            COLUMNS.iter().map(|(k, _)| text(k)).chain([text("message")]).collect()
        })
        .collect();
    // Each column as wide as its widest cell, so rows line up whatever the
    // codes and times are.
    let widths: Vec<usize> = COLUMNS.iter().enumerate().map(|(i, (_, title))| rows.iter().map(|r| r[i].chars().count()).chain([title.len()]).max().unwrap_or(0)).collect();
    let line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths.get(i).map_or(0, |w| w.saturating_sub(cell.chars().count()));
            // The attempts column is numbers: right-aligned.
            if COLUMNS.get(i).is_some_and(|(k, _)| *k == "attempts") {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                if i + 1 < cells.len() {
                    text.push_str(&" ".repeat(pad));
                }
            }
            if i + 1 < cells.len() {
                text.push_str("  ");
            }
        }
        text
    };
    let titles: Vec<&str> = COLUMNS.iter().map(|(_, t)| *t).chain(["message"]).collect();
    writeln!(out, "{}", line(&titles))?;
    for row in &rows {
        writeln!(out, "{}", line(&row.iter().map(String::as_str).collect::<Vec<_>>()))?;
    }
    out.flush()
}

/// A reader that stopped reading (`dlq list | head`) is not an error: what
/// it wanted, it has.
fn quietly_on_a_closed_pipe(written: std::io::Result<()>) -> Result<(), DlqError> {
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

pub(super) async fn show(context: &Context, at: &str, reveal: bool) -> Result<(), DlqError> {
    let (partition, offset) = at.split_once(':').and_then(|(p, o)| Some((p.parse::<i32>().ok()?, o.parse::<i64>().ok()?))).filter(|(p, o)| *p >= 0 && *o >= 0).ok_or_else(|| DlqError::At(at.to_owned()))?;
    let consumer = context.consumer(&format!("{}.dlq-reader", context.kafka.group_id))?;
    let not_found = || DlqError::NotFound(at.to_owned());
    if partition >= context.partitions(&consumer, &context.dead_letter)? {
        return Err(not_found());
    }
    // Past the partition's end there is nothing to wait for: said at once.
    let probe = context.consumer(&format!("{}.dlq-reader.probe", context.kafka.group_id))?;
    let end = high_watermarks(&probe, &[(context.dead_letter.clone(), partition)])?;
    if end.first().is_none_or(|(_, high)| offset >= *high) {
        return Err(not_found());
    }
    let from = HashMap::from([(partition, Offset::Offset(offset))]);
    let messages: Vec<OwnedMessage> = read_from(&consumer, &context.dead_letter, &from)?.into_iter().filter(|m| m.offset() == offset).collect();
    let letter = context.letters(messages).await.into_iter().next().ok_or_else(not_found)?;
    let headers: BTreeMap<String, String> = letter
        .message
        .headers()
        .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default())).collect())
        .unwrap_or_default();
    let request = letter.request.as_ref().map(|r| request_json(r, reveal));
    let out = json!({ "at": letter.id(), "time": letter.at.map(|t| t.to_rfc3339()), "key": letter.message.key().map(|k| String::from_utf8_lossy(k).into_owned()), "headers": headers, "request": request });
    quietly_on_a_closed_pipe(writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&out).expect("JSON")))
}

/// The request as JSON; personal data masked unless `reveal`.
fn request_json(r: &Request, reveal: bool) -> serde_json::Value {
    let hide = |s: &str| if reveal { s.to_owned() } else { format!("<{} characters>", s.chars().count()) };
    let recipient = if reveal { r.recipient.clone() } else { Masked(&r.recipient).to_string() };
    let vars: BTreeMap<&str, String> = r.content.template_vars.iter().map(|(k, v)| (k.as_str(), hide(v))).collect();
    let data: BTreeMap<&str, String> = r.content.data.iter().map(|(k, v)| (k.as_str(), hide(v))).collect();
    let android = r.content.android.as_deref().map(|a| {
        json!({
            "priority": a.priority.map(|p| p.symbol()),
            "ttl_seconds": a.ttl_seconds,
            "collapse_key": a.collapse_key,
            "channel_id": a.channel_id,
            "sound": a.sound,
            "click_action": a.click_action,
        })
    });
    let apns = r.content.apns.as_deref().map(|a| {
        let headers: BTreeMap<&str, &str> = a.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        json!({
            "headers": headers,
            "sound": a.sound,
            "badge": a.badge,
            "category": a.category,
            "thread_id": a.thread_id,
            "content_available": a.content_available,
        })
    });
    json!({
        "event_id": r.event_id,
        "user_id": r.user_id,
        "channel": r.channel.symbol(),
        "recipient": recipient,
        "title": r.content.title.as_deref().map(hide),
        "body": hide(&r.content.body),
        "template_id": r.content.template_id,
        "template_vars": vars,
        "data": data,
        "android": android,
        "apns": apns,
        "scheduled_at": r.scheduled_at.map(|t| t.to_rfc3339()),
        "created_at": r.created_at.to_rfc3339(),
        "time_zone": r.prefs.time_zone,
        "locale": r.prefs.locale,
        "priority": r.prefs.priority.symbol(),
    })
}
