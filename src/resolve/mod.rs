//! Profile resolvers: input protection that needs to know which profiles exist.
//!
//! A pipeline's `[resolver]` ([`crate::config::resolver`]) answers one question
//! per row: does a profile with these identities exist already?
//!
//! - [`idsync`]: IDSync `POST /v1/search`, which never creates a profile; the
//!   MPID it finds goes into the row's batches as `mpid`.
//! - [`sql`]: a warehouse model listing the identities of known profiles.
//!
//! [`Protection`] applies the answer to each chunk of mapped batches, between
//! mapping and packing:
//!
//! - `only_update` (*enforce*): a row that matches no profile is skipped
//!   (`skipped_no_profile`): its batches are removed before anything is packed,
//!   and it is written to `skipped.jsonl` in the run folder. So no request ever
//!   carries a batch that could create a profile.
//! - `only_read` (*forecast*): nothing is removed; each row is counted as
//!   `would_update` or `would_create`. A row whose identities a row earlier in
//!   the run would have created counts as an update, as it would be in a
//!   `create_and_update` run of the same rows.
//!
//! Identity names are translated to IDSync's in [`names`], the one table;
//! lookups are remembered for the run in [`cache`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use futures::stream::{self, StreamExt};
use serde::Deserialize;

use crate::config::model::{InputProtection, Pipeline, Project};
use crate::config::resolver::ResolverSettings;
use crate::mapping::identity::{DeviceIdType, IdentityType};
use crate::mapping::limits::MAX_BATCH_BYTES;
use crate::mapping::EncodedBatch;
use crate::sink::files::JsonlFile;

pub mod cache;
pub mod idsync;
pub mod names;
pub mod sql;

use cache::{hash128, LookupCache};
use idsync::{IdSyncClient, Lookup};
use names::IdentityKey;

/// The reason written for rows `only_update` does not send.
pub const SKIPPED_NO_PROFILE: &str = "skipped_no_profile";

/// Why protection could not be applied; the run fails and sends nothing more.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// IDSync refused the platform key or secret.
    #[error(
        "pipeline `{pipeline}`: IDSync refused the resolver's credentials (HTTP {status}); check resolver.api_key and resolver.api_secret in {} and the variables or files they read. IDSync takes a platform API key and secret, not the feed's",
        file.display()
    )]
    IdSyncUnauthorized {
        /// Pipeline id.
        pipeline: String,
        /// The pipeline's file.
        file: PathBuf,
        /// 401 or 403.
        status: u16,
    },
    /// IDSync answered as a wrong endpoint would (bare 404, 405, 501).
    #[error(
        "pipeline `{pipeline}`: IDSync at {url} answered HTTP {status} ({message}); check resolver.pod or resolver.base_url in {}",
        file.display()
    )]
    IdSyncEndpoint {
        /// Pipeline id.
        pipeline: String,
        /// The pipeline's file.
        file: PathBuf,
        /// The search URL.
        url: String,
        /// Status.
        status: u16,
        /// What the server said (truncated, credentials scrubbed).
        message: String,
    },
    /// The HTTP client could not be built.
    #[error("pipeline `{pipeline}`: cannot set up the IDSync client for {url}: {message}")]
    IdSyncTransport {
        /// Pipeline id.
        pipeline: String,
        /// The search URL.
        url: String,
        /// Cause.
        message: String,
    },
    /// Retryable failures outlasted the attempts or the deadline.
    #[error(
        "pipeline `{pipeline}`: gave up on an IDSync search after {attempts} attempts in {elapsed_secs:.1} s: {last_cause}. Rows not yet resolved were not sent; the next run reads them again"
    )]
    IdSyncRetriesExhausted {
        /// Pipeline id.
        pipeline: String,
        /// Requests sent for this search.
        attempts: u32,
        /// Time since its first attempt.
        elapsed_secs: f64,
        /// The last failure.
        last_cause: String,
    },
    /// The known-profiles model cannot be used.
    #[error("{}: known-profiles model `{model}` of pipeline `{pipeline}`: {message}", file.display())]
    KnownProfiles {
        /// Pipeline id.
        pipeline: String,
        /// Model name.
        model: String,
        /// The `.sql` file.
        file: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// Reading the known profiles failed.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// The skipped-rows file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A batch wsync wrote itself did not parse back (a wsync bug).
    #[error("internal error: a mapped batch of row {row} does not parse: {message}")]
    Batch {
        /// Run row number.
        row: u64,
        /// Parser message.
        message: String,
    },
}

/// The identities of one row, as its first batch carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowIdentities {
    /// User identities and device ids, Events API names, sorted.
    pub identities: Vec<(IdentityKey, String)>,
    /// The batch's `mpid`, when the row had one.
    pub mpid: Option<i64>,
}

/// The members of a batch that identify its profile.
#[derive(Deserialize)]
struct BatchIdentities {
    mpid: Option<i64>,
    #[serde(default)]
    user_identities: HashMap<String, String>,
    #[serde(default)]
    device_info: HashMap<String, serde_json::Value>,
    mp_deviceid: Option<String>,
}

impl RowIdentities {
    /// Read them from a batch's JSON (the first part of a row carries them all).
    pub fn from_batch(json: &[u8]) -> Result<Self, serde_json::Error> {
        let b: BatchIdentities = serde_json::from_slice(json)?;
        let mut identities: Vec<(IdentityKey, String)> = b
            .user_identities
            .into_iter()
            .filter_map(|(k, v)| Some((IdentityKey::User(IdentityType::from_destination(&k)?), v)))
            .collect();
        identities.extend(b.device_info.into_iter().filter_map(|(k, v)| {
            let t = DeviceIdType::from_column(&k)?;
            let v = v.as_str()?.to_owned();
            Some((IdentityKey::Device(t), v))
        }));
        if let Some(id) = b.mp_deviceid {
            identities.push((IdentityKey::Device(DeviceIdType::MpDeviceId), id));
        }
        identities.sort();
        Ok(Self {
            identities,
            mpid: b.mpid,
        })
    }

    /// The hashed keys a profile may be found by: each identity, and the mpid.
    pub fn key_hashes(&self) -> impl Iterator<Item = u128> + '_ {
        self.identities
            .iter()
            .map(|(k, v)| key_hash(k.events_name(), v))
            .chain(self.mpid.map(|m| key_hash("mpid", &m.to_string())))
    }

    /// The IDSync `known_identities` for this row (IDSync names), sorted;
    /// identities IDSync cannot search by are left out.
    pub fn idsync_query(&self) -> Vec<(&'static str, String)> {
        let mut query: Vec<(&'static str, String)> = self
            .identities
            .iter()
            .filter_map(|(k, v)| Some((k.idsync_name()?, v.clone())))
            .collect();
        query.sort();
        query
    }

    /// As JSON for the skipped-rows file: Events API names → values.
    fn to_json(&self) -> serde_json::Value {
        let mut map: serde_json::Map<String, serde_json::Value> = self
            .identities
            .iter()
            .map(|(k, v)| (k.events_name().to_owned(), v.clone().into()))
            .collect();
        if let Some(m) = self.mpid {
            map.insert("mpid".to_owned(), m.into());
        }
        serde_json::Value::Object(map)
    }
}

/// The hash one identity value is known by (kind, value).
pub(crate) fn key_hash(kind: &str, value: &str) -> u128 {
    hash128(&(kind, value))
}

/// What protection did over a run, for the summary, the report and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProtectionSummary {
    /// The pipeline's input protection.
    pub input_protection: &'static str,
    /// `idsync` or `sql`.
    pub resolver: &'static str,
    /// The resolver, described (no secrets).
    pub resolver_detail: String,
    /// Rows looked up.
    pub rows_checked: u64,
    /// `only_update`: rows of existing profiles, sent.
    pub rows_updated: u64,
    /// `only_update`: rows matching no profile, not sent.
    pub skipped_no_profile: u64,
    /// `only_read`: rows that would update an existing profile.
    pub would_update: u64,
    /// `only_read`: rows that would create a profile.
    pub would_create: u64,
    /// `only_update` with IDSync: batches that got the found `mpid`.
    pub mpids_added: u64,
    /// IDSync: HTTP search requests (every attempt).
    pub searches: u64,
    /// IDSync: retried searches.
    pub search_retries: u64,
    /// IDSync: 429 answers.
    pub search_429: u64,
    /// IDSync: lookups answered by the run's cache.
    pub cache_hits: u64,
    /// sql: distinct identities of known profiles.
    pub known_identities: u64,
}

impl ProtectionSummary {
    /// The summary as JSON (`report.json`'s `protection`).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "input_protection": self.input_protection,
            "resolver": self.resolver,
            "resolver_detail": self.resolver_detail,
            "rows_checked": self.rows_checked,
        });
        let extra = if self.input_protection == InputProtection::OnlyRead.as_str() {
            serde_json::json!({
                "would_update": self.would_update,
                "would_create": self.would_create,
            })
        } else {
            serde_json::json!({
                "rows_updated": self.rows_updated,
                "skipped_no_profile": self.skipped_no_profile,
                "mpids_added": self.mpids_added,
            })
        };
        let kind = if self.resolver == "idsync" {
            serde_json::json!({
                "searches": self.searches,
                "search_retries": self.search_retries,
                "search_429": self.search_429,
                "cache_hits": self.cache_hits,
            })
        } else {
            serde_json::json!({"known_identities": self.known_identities})
        };
        for part in [extra, kind] {
            if let (Some(to), serde_json::Value::Object(from)) = (v.as_object_mut(), part) {
                to.extend(from);
            }
        }
        v
    }

    /// `(figure, value)` lines for the run summary table.
    pub fn lines(&self) -> Vec<(String, String)> {
        let mut lines = vec![(
            "protection".to_owned(),
            format!("{} via {}", self.input_protection, self.resolver_detail),
        )];
        let mut add = |k: &str, v: u64| lines.push((format!("  {k}"), v.to_string()));
        add("rows checked", self.rows_checked);
        if self.input_protection == InputProtection::OnlyRead.as_str() {
            add("would update a profile", self.would_update);
            add("would create a profile", self.would_create);
        } else {
            add("updated (existing profile)", self.rows_updated);
            add(SKIPPED_NO_PROFILE, self.skipped_no_profile);
            if self.resolver == "idsync" {
                add("mpid added", self.mpids_added);
            }
        }
        if self.resolver == "idsync" {
            add("IDSync searches", self.searches);
            add("IDSync cache hits", self.cache_hits);
            add("IDSync retries", self.search_retries);
        } else {
            add("known identities", self.known_identities);
        }
        lines
    }
}

/// The resolver in use.
enum Resolver {
    IdSync {
        client: IdSyncClient,
        cache: LookupCache,
        max_in_flight: usize,
    },
    Sql(sql::KnownProfiles),
}

/// A row's answer.
enum Verdict {
    /// A profile exists (with this MPID, when the resolver knows it).
    Exists(Option<i64>),
    /// None does, or it cannot be told; why, for the skipped-rows file.
    Unmatched(String),
}

/// Input protection for one run (see the module docs).
pub struct Protection {
    enforce: bool,
    resolver: Resolver,
    /// Forecast: keys of rows counted as `would_create`, so a later row of the
    /// same (would-be) profile counts as an update.
    created: HashSet<u128>,
    skipped: JsonlFile,
    summary: ProtectionSummary,
}

impl std::fmt::Debug for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protection")
            .field("enforce", &self.enforce)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl Protection {
    /// Protection for a run of `pipeline` writing its files to `run_dir`:
    /// `None` unless the pipeline has a resolver and is `only_update` or
    /// `only_read`. The `sql` resolver reads its known profiles here.
    pub async fn open(
        project: &Project,
        pipeline: &Pipeline,
        run_dir: &Path,
    ) -> Result<Option<Self>, ResolveError> {
        let Some(settings) = project.resolvers.get(&pipeline.id) else {
            return Ok(None);
        };
        let enforce = match pipeline.input_protection {
            InputProtection::OnlyUpdate => true,
            InputProtection::OnlyRead => false,
            // Nothing to protect: every row goes, profiles are created as needed.
            InputProtection::CreateAndUpdate => return Ok(None),
        };
        let mut summary = ProtectionSummary {
            input_protection: pipeline.input_protection.as_str(),
            resolver: settings.kind(),
            resolver_detail: settings.describe(),
            ..ProtectionSummary::default()
        };
        let resolver = match settings {
            ResolverSettings::IdSync(s) => Resolver::IdSync {
                client: IdSyncClient::new(s, pipeline.environment, &pipeline.id, &pipeline.path)?,
                cache: LookupCache::new(s.cache_entries),
                max_in_flight: s.delivery.max_in_flight.max(1),
            },
            ResolverSettings::Sql(s) => {
                let known = sql::KnownProfiles::load(project, pipeline, s).await?;
                summary.known_identities = known.len() as u64;
                Resolver::Sql(known)
            }
        };
        Ok(Some(Self {
            enforce,
            resolver,
            created: HashSet::new(),
            skipped: JsonlFile::new(run_dir.join("skipped.jsonl")),
            summary,
        }))
    }

    /// Look up the rows of one chunk's batches (in row order, as the mapper
    /// wrote them) and, under `only_update`, remove the batches of rows that
    /// match no profile and give the others the MPID IDSync found.
    pub async fn apply(&mut self, batches: &mut Vec<EncodedBatch>) -> Result<(), ResolveError> {
        // Consecutive batches of one row share its identities; its first part
        // carries them all.
        let mut rows: Vec<(usize, usize, RowIdentities)> = Vec::new();
        let mut start = 0;
        while start < batches.len() {
            let row = batches[start].row;
            let end = start + batches[start..].iter().take_while(|b| b.row == row).count();
            let ids = RowIdentities::from_batch(&batches[start].json).map_err(|e| {
                ResolveError::Batch {
                    row,
                    message: e.to_string(),
                }
            })?;
            rows.push((start, end, ids));
            start = end;
        }
        let verdicts = self.verdicts(&rows).await?;
        self.summary.rows_checked += rows.len() as u64;

        if !self.enforce {
            for ((_, _, ids), verdict) in rows.iter().zip(verdicts) {
                let keys: Vec<u128> = ids.key_hashes().collect();
                let exists = matches!(verdict, Verdict::Exists(_))
                    || keys.iter().any(|k| self.created.contains(k));
                if exists {
                    self.summary.would_update += 1;
                } else {
                    self.summary.would_create += 1;
                }
                // Whatever profile the row lands on now has all its identities.
                self.created.extend(keys);
            }
            return Ok(());
        }

        let mut kept = Vec::with_capacity(batches.len());
        let mut taken = std::mem::take(batches).into_iter();
        for ((start, end, ids), verdict) in rows.into_iter().zip(verdicts) {
            let parts: Vec<EncodedBatch> = taken.by_ref().take(end - start).collect();
            let verdict = match (verdict, ids.mpid) {
                (Verdict::Exists(Some(found)), Some(own)) if found != own => {
                    Verdict::Unmatched(format!(
                        "IDSync found profile {found} for these identities, but the row's mpid is {own}"
                    ))
                }
                (v, _) => v,
            };
            match verdict {
                Verdict::Exists(found) => {
                    self.summary.rows_updated += 1;
                    for mut part in parts {
                        if let (Some(mpid), None) = (found, ids.mpid) {
                            // Without room for the member the batch still goes:
                            // mParticle resolves the same existing profile from
                            // its identities, as IDSync just did.
                            if let Some(json) = with_mpid(&part.json, mpid) {
                                part.json = json;
                                self.summary.mpids_added += 1;
                            }
                        }
                        kept.push(part);
                    }
                }
                Verdict::Unmatched(detail) => {
                    self.summary.skipped_no_profile += 1;
                    let row = parts.first().map_or(0, |p| p.row);
                    let line = serde_json::json!({
                        "row": row,
                        "reason": SKIPPED_NO_PROFILE,
                        "detail": detail,
                        "identities": ids.to_json(),
                        "batches": parts.len(),
                    });
                    let path = self.skipped.path().to_owned();
                    self.skipped
                        .write_line(line.to_string().as_bytes())
                        .map_err(|source| ResolveError::File { path, source })?;
                }
            }
        }
        *batches = kept;
        Ok(())
    }

    /// One verdict per row, in order.
    async fn verdicts(
        &mut self,
        rows: &[(usize, usize, RowIdentities)],
    ) -> Result<Vec<Verdict>, ResolveError> {
        match &mut self.resolver {
            Resolver::Sql(known) => Ok(rows
                .iter()
                .map(|(_, _, ids)| {
                    if known.matches(ids) {
                        Verdict::Exists(None)
                    } else {
                        Verdict::Unmatched(
                            "none of the row's identities is among the known profiles".to_owned(),
                        )
                    }
                })
                .collect()),
            Resolver::IdSync {
                client,
                cache,
                max_in_flight,
            } => {
                let queries: Vec<(u128, Vec<(&'static str, String)>)> = rows
                    .iter()
                    .map(|(_, _, ids)| {
                        let q = ids.idsync_query();
                        (hash128(&q), q)
                    })
                    .collect();
                // Each distinct identity set of the chunk that the cache does
                // not know is searched once, `max_in_flight` at a time.
                let mut answers: HashMap<u128, Lookup> = HashMap::new();
                let mut to_ask: Vec<(u128, &[(&'static str, String)])> = Vec::new();
                for (key, q) in &queries {
                    if q.is_empty() || answers.contains_key(key) {
                        continue;
                    }
                    if let Some(found) = cache.get(*key) {
                        answers.insert(*key, found.map_or(Lookup::NotFound, Lookup::Found));
                    } else if !to_ask.iter().any(|(k, _)| k == key) {
                        to_ask.push((*key, q));
                    }
                }
                let client = client.clone();
                let results: Vec<(u128, Result<Lookup, ResolveError>)> = stream::iter(to_ask)
                    .map(|(key, q)| {
                        let client = client.clone();
                        async move { (key, client.search(q).await) }
                    })
                    .buffer_unordered(*max_in_flight)
                    .collect()
                    .await;
                for (key, result) in results {
                    let lookup = result?;
                    match &lookup {
                        Lookup::Found(m) => cache.insert(key, Some(*m)),
                        Lookup::NotFound => cache.insert(key, None),
                        // Not remembered: a refusal may be about this request only.
                        Lookup::Refused(_) => {}
                    }
                    answers.insert(key, lookup);
                }
                let figures = client.figures();
                let get =
                    |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
                self.summary.searches = get(&figures.requests);
                self.summary.search_retries = get(&figures.retries);
                self.summary.search_429 = get(&figures.responses_429);
                self.summary.cache_hits = cache.hits();
                Ok(queries
                    .iter()
                    .map(|(key, q)| {
                        if q.is_empty() {
                            return Verdict::Unmatched(
                                "the row has no identity IDSync can search by (an mpid, alias or amp_id alone); add a user identity or a device id, or use the sql resolver"
                                    .to_owned(),
                            );
                        }
                        match answers.get(key) {
                            Some(Lookup::Found(m)) => Verdict::Exists(Some(*m)),
                            Some(Lookup::Refused(why)) => Verdict::Unmatched(why.clone()),
                            Some(Lookup::NotFound) | None => Verdict::Unmatched(
                                "IDSync search found no profile with these identities".to_owned(),
                            ),
                        }
                    })
                    .collect())
            }
        }
    }

    /// The figures so far.
    pub fn summary(&self) -> &ProtectionSummary {
        &self.summary
    }

    /// Close the skipped-rows file: the summary, the file if any row was
    /// skipped, and the error if it could not be written.
    pub fn finish(self) -> (ProtectionSummary, Result<Option<PathBuf>, ResolveError>) {
        let path = self.skipped.path().to_owned();
        let file = self
            .skipped
            .finish()
            .map_err(|source| ResolveError::File { path, source });
        tracing::info!(
            input_protection = self.summary.input_protection,
            resolver = self.summary.resolver,
            rows_checked = self.summary.rows_checked,
            skipped_no_profile = self.summary.skipped_no_profile,
            would_update = self.summary.would_update,
            would_create = self.summary.would_create,
            "Input protection applied."
        );
        (self.summary, file)
    }
}

/// A pipeline's protection in one line, for `wsync validate`.
pub fn describe_protection(
    protection: InputProtection,
    resolver: Option<&ResolverSettings>,
) -> String {
    match (protection, resolver) {
        (InputProtection::CreateAndUpdate, None) => {
            "create_and_update: every valid row is sent; profiles are created as needed".to_owned()
        }
        (InputProtection::CreateAndUpdate, Some(r)) => format!(
            "create_and_update: every valid row is sent; the resolver ({}) is not used by this level",
            r.describe()
        ),
        (InputProtection::OnlyUpdate, Some(r)) => format!(
            "only_update: each row is looked up with {}; rows that match no profile are skipped ({SKIPPED_NO_PROFILE}) and never sent",
            r.describe()
        ),
        // Validation refuses this; said plainly in case a project is built by hand.
        (InputProtection::OnlyUpdate, None) => {
            "only_update without a resolver: refused, add [resolver]".to_owned()
        }
        (InputProtection::OnlyRead, None) => {
            "only_read: dry run, nothing is sent; add a [resolver] to forecast how many rows would update or create a profile".to_owned()
        }
        (InputProtection::OnlyRead, Some(r)) => format!(
            "only_read: dry run, nothing is sent to the Events API; rows are looked up with {} to count would-update and would-create",
            r.describe()
        ),
    }
}

/// `json` (a batch object) with `"mpid":N` as its first member, or `None` when
/// that would take it over mParticle's batch size limit.
fn with_mpid(json: &[u8], mpid: i64) -> Option<Vec<u8>> {
    let member = format!("\"mpid\":{mpid},");
    if json.first() != Some(&b'{') || json.len() + member.len() > MAX_BATCH_BYTES {
        return None;
    }
    let mut out = Vec::with_capacity(json.len() + member.len());
    out.push(b'{');
    out.extend_from_slice(member.as_bytes());
    out.extend_from_slice(&json[1..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_come_from_the_first_part() {
        let json = br#"{"source_request_id":"x","environment":"development","mpid":7,"user_identities":{"customer_id":"c1","email":"a@x"},"device_info":{"ios_advertising_id":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","amp_id":"amp"},"mp_deviceid":"d","user_attributes":{"a":1}}"#;
        let ids = RowIdentities::from_batch(json).unwrap();
        assert_eq!(ids.mpid, Some(7));
        assert_eq!(
            ids.idsync_query(),
            vec![
                ("customerid", "c1".to_owned()),
                ("device_application_stamp", "d".to_owned()),
                ("email", "a@x".to_owned()),
                (
                    "ios_idfa",
                    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".to_owned()
                ),
            ]
        );
        // amp_id is kept for matching, though IDSync cannot search it.
        assert_eq!(ids.key_hashes().count(), 6);
    }

    #[test]
    fn mpid_goes_first_and_respects_the_size_limit() {
        let json = br#"{"source_request_id":"x","environment":"development"}"#;
        assert_eq!(
            with_mpid(json, -5).unwrap(),
            br#"{"mpid":-5,"source_request_id":"x","environment":"development"}"#.to_vec()
        );
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_BATCH_BYTES - 8));
        assert_eq!(with_mpid(big.as_bytes(), 1), None);
    }
}
