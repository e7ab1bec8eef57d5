//! Retention: which snapshots a `forget` policy keeps, and removing the others.
//!
//! [`plan`] is a pure function of the snapshot list and the policy; [`apply`] is the only part
//! that touches the repository. The selection follows restic 0.14 (`restic forget`), so that a
//! policy means the same thing whichever tool runs it:
//!
//! - Snapshots are grouped (by default by host and paths, like restic's `--group-by host,paths`)
//!   and the policy is applied to each group on its own.
//! - Within a group snapshots are walked newest first. Each `keep_<period>` rule has a counter
//!   and remembers the bucket (hour, day, ISO week, month, year) of the last snapshot it kept;
//!   a snapshot whose bucket differs from that one is kept while the counter is above zero, and
//!   the counter goes down by one. So "daily 7" keeps the newest snapshot of each of the seven
//!   most recent days *that have a snapshot*, not of the last seven calendar days.
//! - `keep_last n` keeps the n newest snapshots. `keep_tags` keeps every snapshot carrying all
//!   tags of one of the lists, without counting. `keep_within` keeps every snapshot newer than
//!   the newest snapshot (that is not in the future) minus the duration, computed in calendar
//!   units like Go's `AddDate`. `keep_within_<period>` keeps one snapshot per bucket inside that
//!   window, without a count.
//! - A snapshot is kept if any rule keeps it; all rules see every snapshot.
//!
//! **Time zone.** Buckets use the wall-clock time written in the snapshot, in the offset
//! recorded there: the local time of the machine that took it. That is what restic does (Go
//! parses the RFC 3339 time into its recorded offset), so a snapshot taken at 00:30 local time
//! counts for that local day wherever prune runs later. Converting to UTC or to the local zone
//! of the machine running `forget` would make the result depend on where it runs.
//!
//! **Known difference from newer restic.** restic 0.16 and later additionally keep the oldest
//! snapshot of a group when a `keep_<period>` counter is not used up; restic 0.14 (our test
//! oracle) does not, and neither do we.
//!
//! **Ties.** Snapshots with the same time keep the order of the input (newest-first sort is
//! stable); [`plan`] sorts its input by id first so the result does not depend on listing order.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration as TimeDelta, FixedOffset, NaiveDate, Timelike, Utc};
use serde::Serialize;

use crate::backend::FileType;
use crate::format::Snapshot;
use crate::id::Id;
use crate::lock::Lock;
use crate::repo::Repository;
use crate::{Error, Result};

/// A calendar duration as restic writes it: `1y6m`, `14d`, `36h`, `2y3m4d5h`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetentionDuration {
    /// Whole years.
    pub years: i32,
    /// Whole months.
    pub months: i32,
    /// Whole days.
    pub days: i32,
    /// Whole hours.
    pub hours: i32,
}

impl RetentionDuration {
    /// Whether every part is zero (such a duration selects nothing and counts as "not given").
    pub fn is_zero(&self) -> bool {
        *self == RetentionDuration::default()
    }

    /// `t` moved back by this duration: years, months and days on the calendar in `t`'s own
    /// offset (an overflowing day rolls into the next month, as Go's `AddDate` does), then hours.
    pub fn before(&self, t: DateTime<FixedOffset>) -> DateTime<FixedOffset> {
        let wall = t.naive_local();
        let month0 = i64::from(wall.month0()) - i64::from(self.months);
        let year = i64::from(wall.year()) - i64::from(self.years) + month0.div_euclid(12);
        let month0 = month0.rem_euclid(12);
        let first = i32::try_from(year)
            .ok()
            .and_then(|y| NaiveDate::from_ymd_opt(y, month0 as u32 + 1, 1));
        let Some(first) = first else {
            return DateTime::<Utc>::MIN_UTC.fixed_offset();
        };
        let day_offset = i64::from(wall.day()) - 1 - i64::from(self.days);
        let shifted = first
            .checked_add_signed(TimeDelta::days(day_offset))
            .map(|d| d.and_time(wall.time()))
            .and_then(|naive| naive.checked_sub_signed(TimeDelta::hours(i64::from(self.hours))))
            .and_then(|naive| naive.and_local_timezone(*t.offset()).single());
        shifted.unwrap_or_else(|| DateTime::<Utc>::MIN_UTC.fixed_offset())
    }
}

impl fmt::Display for RetentionDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n != 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for RetentionDuration {
    type Err = Error;

    /// Parses restic's duration syntax: numbers each followed by `y`, `m`, `d` or `h`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "invalid duration {s:?}: {why} (write it like restic does, e.g. 7d, 36h, 1y6m)"
            ))
        };
        let mut d = RetentionDuration::default();
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(bad("it is empty"));
        }
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(bad("expected a number"));
            }
            let n: i32 = rest[..digits]
                .parse()
                .map_err(|_| bad("number too large"))?;
            rest = &rest[digits..];
            let mut chars = rest.chars();
            let slot = match chars.next() {
                Some('y') => &mut d.years,
                Some('m') => &mut d.months,
                Some('d') => &mut d.days,
                Some('h') => &mut d.hours,
                Some(c) => return Err(bad(&format!("unknown unit {c:?}"))),
                None => return Err(bad("a number has no unit")),
            };
            *slot = n;
            rest = chars.as_str();
        }
        Ok(d)
    }
}

/// Which snapshots to keep. A field that is `None` (or empty) is not part of the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Keep the n newest snapshots.
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the n newest hours that have one.
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the n newest days that have one.
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the n newest ISO weeks that have one.
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the n newest months that have one.
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the n newest years that have one.
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot that has all tags of one entry. An entry is a comma-separated tag
    /// list like restic's `--keep-tag a,b`; the empty entry matches snapshots without tags.
    pub keep_tags: Vec<String>,
    /// Keep every snapshot taken within this duration before the newest snapshot.
    pub keep_within: Option<RetentionDuration>,
    /// Within this duration of the newest snapshot, keep the newest of each hour.
    pub keep_within_hourly: Option<RetentionDuration>,
    /// Within this duration of the newest snapshot, keep the newest of each day.
    pub keep_within_daily: Option<RetentionDuration>,
    /// Within this duration of the newest snapshot, keep the newest of each ISO week.
    pub keep_within_weekly: Option<RetentionDuration>,
    /// Within this duration of the newest snapshot, keep the newest of each month.
    pub keep_within_monthly: Option<RetentionDuration>,
    /// Within this duration of the newest snapshot, keep the newest of each year.
    pub keep_within_yearly: Option<RetentionDuration>,
}

impl Policy {
    fn counts(&self) -> [(Option<u32>, Period); 6] {
        [
            (self.keep_last, Period::Every),
            (self.keep_hourly, Period::Hour),
            (self.keep_daily, Period::Day),
            (self.keep_weekly, Period::Week),
            (self.keep_monthly, Period::Month),
            (self.keep_yearly, Period::Year),
        ]
    }

    fn withins(&self) -> [(Option<RetentionDuration>, Period); 5] {
        [
            (self.keep_within_hourly, Period::Hour),
            (self.keep_within_daily, Period::Day),
            (self.keep_within_weekly, Period::Week),
            (self.keep_within_monthly, Period::Month),
            (self.keep_within_yearly, Period::Year),
        ]
    }

    /// Whether no rule is given. A count of zero and a zero duration count as not given, as
    /// in restic.
    pub fn is_empty(&self) -> bool {
        self.counts().iter().all(|(n, _)| n.unwrap_or(0) == 0)
            && self
                .withins()
                .iter()
                .all(|(d, _)| d.is_none_or(|d| d.is_zero()))
            && self.keep_within.is_none_or(|d| d.is_zero())
            && self.keep_tags.is_empty()
    }
}

impl fmt::Display for Policy {
    /// A one-line summary, e.g. `keep 3 latest, 7 daily snapshots and all within 2d`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .counts()
            .iter()
            .filter_map(|(n, p)| {
                n.filter(|&n| n > 0)
                    .map(|n| format!("{n} {}", p.adjective()))
            })
            .collect();
        if let Some(d) = self.keep_within.filter(|d| !d.is_zero()) {
            parts.push(format!("all within {d}"));
        }
        for (d, p) in self.withins() {
            if let Some(d) = d.filter(|d| !d.is_zero()) {
                parts.push(format!("{} within {d}", p.adjective()));
            }
        }
        if !self.keep_tags.is_empty() {
            parts.push(format!("all tagged {}", self.keep_tags.join(" or ")));
        }
        if parts.is_empty() {
            return f.write_str("keep everything (no policy)");
        }
        write!(f, "keep {} snapshots", parts.join(", "))
    }
}

/// The bucket size of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    /// Every snapshot is its own bucket (`keep_last`).
    Every,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    /// The bucket of a snapshot at wall-clock time `t`; `nr` is its position in the group.
    fn bucket(self, t: &DateTime<FixedOffset>, nr: usize) -> i64 {
        let (y, m, d, h) = (
            i64::from(t.year()),
            i64::from(t.month()),
            i64::from(t.day()),
            i64::from(t.hour()),
        );
        match self {
            Period::Every => nr as i64,
            Period::Hour => ((y * 100 + m) * 100 + d) * 100 + h,
            Period::Day => (y * 100 + m) * 100 + d,
            Period::Week => {
                let w = t.iso_week();
                i64::from(w.year()) * 100 + i64::from(w.week())
            }
            Period::Month => y * 100 + m,
            Period::Year => y,
        }
    }

    fn adjective(self) -> &'static str {
        match self {
            Period::Every => "latest",
            Period::Hour => "hourly",
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
            Period::Year => "yearly",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Period::Every => "last snapshot",
            Period::Hour => "hourly snapshot",
            Period::Day => "daily snapshot",
            Period::Week => "weekly snapshot",
            Period::Month => "monthly snapshot",
            Period::Year => "yearly snapshot",
        }
    }
}

/// What snapshots are grouped by before the policy is applied. The default is host and paths,
/// as in restic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupBy {
    /// Group by host name.
    pub host: bool,
    /// Group by the (sorted) list of paths.
    pub paths: bool,
    /// Group by the (sorted) list of tags.
    pub tags: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy {
            host: true,
            paths: true,
            tags: false,
        }
    }
}

impl FromStr for GroupBy {
    type Err = Error;

    /// Parses restic's `--group-by` value: a comma-separated subset of `host`, `paths`, `tags`
    /// (the empty string groups nothing: one group for all snapshots).
    fn from_str(s: &str) -> Result<Self> {
        let mut g = GroupBy {
            host: false,
            paths: false,
            tags: false,
        };
        for part in s.split(',').map(str::trim) {
            match part {
                "host" | "hosts" => g.host = true,
                "path" | "paths" => g.paths = true,
                "tag" | "tags" => g.tags = true,
                "" => {}
                other => {
                    return Err(Error::Invalid(format!(
                        "unknown grouping {other:?} (use a comma-separated list of host, paths, tags)"
                    )));
                }
            }
        }
        Ok(g)
    }
}

/// The key of one group: the fields that are grouped by, the others `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GroupKey {
    /// The host name, when grouping by host.
    pub hostname: Option<String>,
    /// The sorted paths, when grouping by paths.
    pub paths: Option<Vec<String>>,
    /// The sorted tags, when grouping by tags.
    pub tags: Option<Vec<String>>,
}

impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(h) = &self.hostname {
            parts.push(format!("host {h:?}"));
        }
        if let Some(p) = &self.paths {
            parts.push(format!("paths [{}]", p.join(", ")));
        }
        if let Some(t) = &self.tags {
            parts.push(format!("tags [{}]", t.join(", ")));
        }
        if parts.is_empty() {
            return f.write_str("all snapshots");
        }
        f.write_str(&parts.join(", "))
    }
}

/// The facts about a snapshot that retention looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFacts {
    /// The snapshot's id (its file name).
    pub id: Id,
    /// When it was taken, in the offset it was recorded with.
    pub time: DateTime<FixedOffset>,
    /// The host that took it.
    pub hostname: String,
    /// The paths it holds.
    pub paths: Vec<String>,
    /// Its tags.
    pub tags: Vec<String>,
}

impl SnapshotFacts {
    /// The facts of a stored snapshot.
    pub fn of(id: Id, s: &Snapshot) -> SnapshotFacts {
        SnapshotFacts {
            id,
            time: s.time,
            hostname: s.hostname.clone(),
            paths: s.paths.clone(),
            tags: s.tags.clone(),
        }
    }
}

/// A snapshot that stays, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kept {
    /// The snapshot.
    pub id: Id,
    /// Its time.
    pub time: DateTime<FixedOffset>,
    /// Every rule that keeps it (`daily snapshot`, `within 2d`, `has tags [a]`).
    pub reasons: Vec<String>,
}

/// A snapshot that goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Removed {
    /// The snapshot.
    pub id: Id,
    /// Its time.
    pub time: DateTime<FixedOffset>,
}

/// The decision for one group, newest snapshot first in both lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForgetGroup {
    /// What the group shares.
    pub key: GroupKey,
    /// Snapshots to keep.
    pub keep: Vec<Kept>,
    /// Snapshots to remove.
    pub remove: Vec<Removed>,
}

/// The decision for all snapshots, groups sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ForgetPlan {
    /// One entry per group.
    pub groups: Vec<ForgetGroup>,
}

impl ForgetPlan {
    /// Every snapshot to keep.
    pub fn keep_ids(&self) -> Vec<Id> {
        self.groups
            .iter()
            .flat_map(|g| g.keep.iter().map(|k| k.id))
            .collect()
    }

    /// Every snapshot to remove.
    pub fn remove_ids(&self) -> Vec<Id> {
        self.groups
            .iter()
            .flat_map(|g| g.remove.iter().map(|r| r.id))
            .collect()
    }
}

impl fmt::Display for ForgetPlan {
    /// A listing for `forget --dry-run`: per group, each snapshot with keep/remove and reasons.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.groups.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            writeln!(
                f,
                "{}: keep {}, remove {}",
                g.key,
                g.keep.len(),
                g.remove.len()
            )?;
            for k in &g.keep {
                writeln!(
                    f,
                    "  keep   {} {}  {}",
                    k.id.short(),
                    k.time.format("%Y-%m-%d %H:%M:%S"),
                    k.reasons.join(", ")
                )?;
            }
            for r in &g.remove {
                writeln!(
                    f,
                    "  remove {} {}",
                    r.id.short(),
                    r.time.format("%Y-%m-%d %H:%M:%S")
                )?;
            }
        }
        Ok(())
    }
}

fn group_key(s: &SnapshotFacts, by: GroupBy) -> GroupKey {
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    GroupKey {
        hostname: by.host.then(|| s.hostname.clone()),
        paths: by.paths.then(|| sorted(&s.paths)),
        tags: by.tags.then(|| sorted(&s.tags)),
    }
}

/// Whether `s` has every tag of the comma-separated `list` (the empty list: has no tags).
fn has_tag_list(s: &SnapshotFacts, list: &str) -> bool {
    list.split(',').map(str::trim).all(|tag| {
        if tag.is_empty() {
            s.tags.is_empty()
        } else {
            s.tags.iter().any(|t| t == tag)
        }
    })
}

/// Splits snapshots into groups and decides, for each, what to keep; `now` is the current time,
/// used only to ignore snapshots from the future when finding the newest one for `keep_within`.
///
/// Fails with "no policy given" when the policy has no rule: forgetting with an empty policy
/// is almost always a mistake in a script, and keeping everything silently would hide it.
pub fn plan_at(
    snapshots: &[(Id, Snapshot)],
    policy: &Policy,
    group_by: GroupBy,
    now: DateTime<Utc>,
) -> Result<ForgetPlan> {
    let facts: Vec<SnapshotFacts> = snapshots
        .iter()
        .map(|(id, s)| SnapshotFacts::of(*id, s))
        .collect();
    plan_facts(&facts, policy, group_by, now)
}

/// [`plan_at`] at the current time.
pub fn plan(
    snapshots: &[(Id, Snapshot)],
    policy: &Policy,
    group_by: GroupBy,
) -> Result<ForgetPlan> {
    plan_at(snapshots, policy, group_by, Utc::now())
}

/// [`plan_at`] on the facts alone.
pub fn plan_facts(
    snapshots: &[SnapshotFacts],
    policy: &Policy,
    group_by: GroupBy,
    now: DateTime<Utc>,
) -> Result<ForgetPlan> {
    if policy.is_empty() {
        return Err(Error::Invalid(
            "no policy given: name at least one --keep-* rule (e.g. --keep-last 7)".into(),
        ));
    }
    let mut sorted: Vec<&SnapshotFacts> = snapshots.iter().collect();
    sorted.sort_by_key(|s| s.id);
    let mut groups: BTreeMap<GroupKey, Vec<&SnapshotFacts>> = BTreeMap::new();
    for s in sorted {
        groups.entry(group_key(s, group_by)).or_default().push(s);
    }
    let groups = groups
        .into_iter()
        .map(|(key, mut list)| {
            // Newest first; stable, so equal times keep id order.
            list.sort_by_key(|s| std::cmp::Reverse(s.time));
            let (keep, remove) = apply_to_group(&list, policy, now);
            ForgetGroup { key, keep, remove }
        })
        .collect();
    Ok(ForgetPlan { groups })
}

/// Removes the snapshot files the plan removes, under an exclusive lock. The data they used
/// stays until `prune`. Snapshots already gone are not an error; snapshots that are no longer
/// in the repository's listing are skipped, so a plan can be applied twice.
pub fn apply(repo: &Repository, plan: &ForgetPlan) -> Result<usize> {
    let lock = Lock::exclusive(repo)?;
    let present: std::collections::HashSet<Id> =
        repo.list_ids(FileType::Snapshot)?.into_iter().collect();
    let mut removed = 0;
    for id in plan.remove_ids() {
        if present.contains(&id) {
            lock.check()?;
            repo.backend().remove(FileType::Snapshot, &id.to_hex())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The policy applied to one group sorted newest first.
fn apply_to_group(
    list: &[&SnapshotFacts],
    policy: &Policy,
    now: DateTime<Utc>,
) -> (Vec<Kept>, Vec<Removed>) {
    // The newest snapshot that is not in the future is the reference for the `within` rules.
    let latest = list.iter().map(|s| s.time).filter(|t| *t < now).max();
    let window_start = |d: RetentionDuration| latest.map(|l| d.before(l));

    // A counter and the last bucket kept, per counting rule.
    let mut counters: Vec<(u32, Period, Option<i64>)> = policy
        .counts()
        .iter()
        .filter_map(|(n, p)| n.filter(|&n| n > 0).map(|n| (n, *p, None)))
        .collect();
    let mut withins: Vec<(RetentionDuration, Period, Option<i64>)> = policy
        .withins()
        .iter()
        .filter_map(|(d, p)| d.filter(|d| !d.is_zero()).map(|d| (d, *p, None)))
        .collect();
    let tag_lists: Vec<&String> = policy.keep_tags.iter().collect();

    let mut keep = Vec::new();
    let mut remove = Vec::new();
    for (nr, s) in list.iter().enumerate() {
        let mut reasons = Vec::new();
        for list in &tag_lists {
            if has_tag_list(s, list) {
                let tags: Vec<&str> = list.split(',').map(str::trim).collect();
                reasons.push(format!("has tags [{}]", tags.join(" ")));
            }
        }
        if let Some(d) = policy.keep_within.filter(|d| !d.is_zero()) {
            // With no snapshot in the past there is no reference; everything is "within".
            if window_start(d).is_none_or(|start| s.time > start) {
                reasons.push(format!("within {d}"));
            }
        }
        for (count, period, last) in counters.iter_mut() {
            if *count == 0 {
                continue;
            }
            let b = period.bucket(&s.time, nr);
            if *last != Some(b) {
                *last = Some(b);
                *count -= 1;
                reasons.push(period.noun().to_string());
            }
        }
        for (d, period, last) in withins.iter_mut() {
            if window_start(*d).is_none_or(|start| s.time > start) {
                let b = period.bucket(&s.time, nr);
                if *last != Some(b) {
                    *last = Some(b);
                    reasons.push(format!("{} within {d}", period.adjective()));
                }
            }
        }
        if reasons.is_empty() {
            remove.push(Removed {
                id: s.id,
                time: s.time,
            });
        } else {
            keep.push(Kept {
                id: s.id,
                time: s.time,
                reasons,
            });
        }
    }
    (keep, remove)
}

#[cfg(test)]
mod tests;
