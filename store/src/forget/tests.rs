use super::*;

fn at(n: u8, time: &str) -> SnapshotFacts {
    SnapshotFacts {
        id: Id([n; 32]),
        time: DateTime::parse_from_rfc3339(time).unwrap(),
        hostname: "h".into(),
        paths: vec!["/vol.img".into()],
        tags: vec![],
    }
}

fn tagged(n: u8, time: &str, tags: &[&str]) -> SnapshotFacts {
    SnapshotFacts {
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..at(n, time)
    }
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
        .unwrap()
        .to_utc()
}

/// The numbers of the kept snapshots of a single-group plan, newest first.
fn kept(snaps: &[SnapshotFacts], policy: Policy) -> Vec<u8> {
    let plan = plan_facts(snaps, &policy, GroupBy::default(), now()).unwrap();
    assert_eq!(plan.groups.len(), 1, "expected one group");
    let g = &plan.groups[0];
    assert_eq!(
        g.keep.len() + g.remove.len(),
        snaps.len(),
        "every snapshot is decided once"
    );
    g.keep.iter().map(|k| k.id.0[0]).collect()
}

fn hourly_day() -> Vec<SnapshotFacts> {
    vec![
        at(1, "2024-03-10T08:05:00Z"),
        at(2, "2024-03-10T08:45:00Z"),
        at(3, "2024-03-10T09:10:00Z"),
        at(4, "2024-03-10T11:00:00Z"),
        at(5, "2024-03-10T11:59:59Z"),
    ]
}

#[test]
fn keep_last_keeps_the_newest_n_whatever_their_times() {
    assert_eq!(
        kept(
            &hourly_day(),
            Policy {
                keep_last: Some(2),
                ..Default::default()
            }
        ),
        vec![5, 4]
    );
}

#[test]
fn keep_last_larger_than_the_group_keeps_everything() {
    assert_eq!(
        kept(
            &hourly_day(),
            Policy {
                keep_last: Some(9),
                ..Default::default()
            }
        ),
        vec![5, 4, 3, 2, 1]
    );
}

#[test]
fn keep_hourly_keeps_the_newest_snapshot_of_each_hour_that_has_one() {
    // Hours 11, 09 and 08 have snapshots; 10 has none and does not use up the count.
    assert_eq!(
        kept(
            &hourly_day(),
            Policy {
                keep_hourly: Some(3),
                ..Default::default()
            }
        ),
        vec![5, 3, 2]
    );
}

#[test]
fn keep_daily_counts_days_with_snapshots_not_calendar_days() {
    let snaps = vec![
        at(1, "2024-03-01T10:00:00Z"),
        at(2, "2024-03-01T22:00:00Z"),
        at(3, "2024-03-05T01:00:00Z"),
        at(4, "2024-03-09T12:00:00Z"),
        at(5, "2024-03-09T13:00:00Z"),
    ];
    assert_eq!(
        kept(
            &snaps,
            Policy {
                keep_daily: Some(2),
                ..Default::default()
            }
        ),
        vec![5, 3]
    );
    assert_eq!(
        kept(
            &snaps,
            Policy {
                keep_daily: Some(3),
                ..Default::default()
            }
        ),
        vec![5, 3, 2]
    );
}

#[test]
fn keep_weekly_uses_iso_weeks_starting_on_monday() {
    let snaps = vec![
        // 2024-03-03 is a Sunday (ISO week 9), 2024-03-04 a Monday (week 10).
        at(1, "2024-03-02T12:00:00Z"),
        at(2, "2024-03-03T12:00:00Z"),
        at(3, "2024-03-04T12:00:00Z"),
        at(4, "2024-03-10T23:00:00Z"),
    ];
    assert_eq!(
        kept(
            &snaps,
            Policy {
                keep_weekly: Some(2),
                ..Default::default()
            }
        ),
        vec![4, 2]
    );
}

#[test]
fn keep_weekly_puts_early_january_into_the_iso_week_of_the_previous_year() {
    // 2021-01-03 (Sunday) is in ISO week 53 of 2020, as is 2020-12-28.
    let snaps = vec![
        at(1, "2020-12-28T12:00:00Z"),
        at(2, "2021-01-03T12:00:00Z"),
        at(3, "2021-01-04T12:00:00Z"),
    ];
    assert_eq!(
        kept(
            &snaps,
            Policy {
                keep_weekly: Some(5),
                ..Default::default()
            }
        ),
        vec![3, 2]
    );
}

#[test]
fn keep_monthly_keeps_the_newest_snapshot_of_each_month() {
    let snaps = vec![
        at(1, "2023-11-30T12:00:00Z"),
        at(2, "2024-01-01T00:00:00Z"),
        at(3, "2024-01-31T23:59:00Z"),
        at(4, "2024-02-29T12:00:00Z"),
    ];
    assert_eq!(
        kept(
            &snaps,
            Policy {
                keep_monthly: Some(2),
                ..Default::default()
            }
        ),
        vec![4, 3]
    );
    assert_eq!(
        kept(
            &snaps,
            Policy {
                keep_monthly: Some(12),
                ..Default::default()
            }
        ),
        vec![4, 3, 1]
    );
}

#[test]
fn keep_yearly_keeps_the_newest_snapshot_of_each_year() {
    let snaps = vec![
        at(1, "2021-06-01T00:00:00Z"),
        at(2, "2022-01-01T00:00:00Z"),
        at(3, "2022-12-31T23:00:00Z"),
        at(4, "2024-02-29T12:00:00Z"),
    ];
    assert_eq!(
        kept(
            &snaps,
            Policy {
                keep_yearly: Some(2),
                ..Default::default()
            }
        ),
        vec![4, 3]
    );
}

#[test]
fn keep_tags_keeps_snapshots_with_all_tags_of_one_list_without_counting() {
    let snaps = vec![
        tagged(1, "2024-01-01T00:00:00Z", &["a", "b"]),
        tagged(2, "2024-01-02T00:00:00Z", &["a"]),
        tagged(3, "2024-01-03T00:00:00Z", &["c"]),
        tagged(4, "2024-01-04T00:00:00Z", &[]),
    ];
    let policy = Policy {
        keep_tags: vec!["a,b".into(), "c".into()],
        ..Default::default()
    };
    assert_eq!(kept(&snaps, policy), vec![3, 1]);
    let untagged = Policy {
        keep_tags: vec!["".into()],
        ..Default::default()
    };
    assert_eq!(kept(&snaps, untagged), vec![4]);
}

#[test]
fn keep_within_keeps_everything_newer_than_the_newest_minus_the_duration() {
    let snaps = vec![
        at(1, "2024-03-01T11:59:59Z"),
        at(2, "2024-03-01T12:00:00Z"),
        at(3, "2024-03-01T12:00:01Z"),
        at(4, "2024-03-08T12:00:00Z"),
    ];
    // 7 days before the newest is exactly 2024-03-01T12:00:00; "after" is strict.
    let policy = Policy {
        keep_within: Some("7d".parse().unwrap()),
        ..Default::default()
    };
    assert_eq!(kept(&snaps, policy), vec![4, 3]);
}

#[test]
fn keep_within_counts_months_on_the_calendar_like_go_add_date() {
    // 2024-03-31 minus one month is "2024-02-31", which Go normalises to 2024-03-02.
    let snaps = vec![
        at(1, "2024-03-01T12:00:00Z"),
        at(2, "2024-03-02T12:00:01Z"),
        at(3, "2024-03-31T12:00:00Z"),
    ];
    let policy = Policy {
        keep_within: Some("1m".parse().unwrap()),
        ..Default::default()
    };
    assert_eq!(kept(&snaps, policy), vec![3, 2]);
}

#[test]
fn keep_within_measures_from_the_newest_snapshot_that_is_not_in_the_future() {
    let snaps = vec![
        at(1, "2024-01-01T00:00:00Z"),
        at(2, "2024-01-02T00:00:00Z"),
        at(3, "2099-01-01T00:00:00Z"),
    ];
    let policy = Policy {
        keep_within: Some("1d".parse().unwrap()),
        ..Default::default()
    };
    // The reference is 2024-01-02, so 2024-01-01T00:00 is exactly at the edge: not kept.
    assert_eq!(kept(&snaps, policy), vec![3, 2]);
}

#[test]
fn keep_within_daily_keeps_one_per_day_inside_the_window_without_a_count() {
    let snaps = vec![
        at(1, "2024-01-01T10:00:00Z"),
        at(2, "2024-01-08T10:00:00Z"),
        at(3, "2024-01-08T11:00:00Z"),
        at(4, "2024-01-09T10:00:00Z"),
        at(5, "2024-01-10T09:00:00Z"),
        at(6, "2024-01-10T10:00:00Z"),
    ];
    let policy = Policy {
        keep_within_daily: Some("3d".parse().unwrap()),
        ..Default::default()
    };
    assert_eq!(kept(&snaps, policy), vec![6, 4, 3]);
}

#[test]
fn rules_combine_as_a_union_and_each_kept_snapshot_names_its_reasons() {
    let snaps = vec![
        at(1, "2024-01-01T10:00:00Z"),
        at(2, "2024-01-15T10:00:00Z"),
        at(3, "2024-02-01T10:00:00Z"),
        at(4, "2024-02-20T10:00:00Z"),
        at(5, "2024-02-20T11:00:00Z"),
        at(6, "2024-02-21T10:00:00Z"),
    ];
    let policy = Policy {
        keep_last: Some(1),
        keep_daily: Some(2),
        keep_monthly: Some(3),
        ..Default::default()
    };
    let plan = plan_facts(&snaps, &policy, GroupBy::default(), now()).unwrap();
    let g = &plan.groups[0];
    let got: Vec<(u8, Vec<&str>)> = g
        .keep
        .iter()
        .map(|k| (k.id.0[0], k.reasons.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                6,
                vec!["last snapshot", "daily snapshot", "monthly snapshot"]
            ),
            (5, vec!["daily snapshot"]),
            (2, vec!["monthly snapshot"]),
        ]
    );
    let removed: Vec<u8> = g.remove.iter().map(|r| r.id.0[0]).collect();
    assert_eq!(removed, vec![4, 3, 1]);
}

#[test]
fn an_empty_policy_is_an_error_not_keep_everything() {
    let err = plan_facts(&hourly_day(), &Policy::default(), GroupBy::default(), now()).unwrap_err();
    assert!(err.to_string().contains("no policy given"), "{err}");
    let zeros = Policy {
        keep_last: Some(0),
        keep_within: Some(RetentionDuration::default()),
        ..Default::default()
    };
    assert!(zeros.is_empty());
    assert!(plan_facts(&hourly_day(), &zeros, GroupBy::default(), now()).is_err());
}

#[test]
fn buckets_use_the_wall_clock_time_recorded_in_the_snapshot() {
    // Both are 2024-05-01 in their own local time although the first is April 30 in UTC.
    let snaps = vec![
        at(1, "2024-05-01T01:30:00+02:00"),
        at(2, "2024-05-01T20:00:00+02:00"),
    ];
    assert_eq!(
        kept(
            &snaps,
            Policy {
                keep_daily: Some(5),
                ..Default::default()
            }
        ),
        vec![2]
    );
}

#[test]
fn groups_split_by_host_and_paths_and_paths_order_does_not_matter() {
    let mut a = at(1, "2024-01-01T00:00:00Z");
    a.paths = vec!["/b".into(), "/a".into()];
    let mut b = at(2, "2024-01-02T00:00:00Z");
    b.paths = vec!["/a".into(), "/b".into()];
    let mut c = at(3, "2024-01-03T00:00:00Z");
    c.hostname = "other".into();
    let policy = Policy {
        keep_last: Some(1),
        ..Default::default()
    };
    let plan = plan_facts(
        &[a.clone(), b.clone(), c.clone()],
        &policy,
        GroupBy::default(),
        now(),
    )
    .unwrap();
    assert_eq!(plan.groups.len(), 2);
    assert_eq!(plan.keep_ids(), vec![b.id, c.id]);
    assert_eq!(plan.remove_ids(), vec![a.id]);
    assert_eq!(
        plan.groups[0].key.paths.as_deref(),
        Some(&["/a".to_string(), "/b".to_string()][..])
    );

    let one_group = plan_facts(&[a, b, c.clone()], &policy, "".parse().unwrap(), now()).unwrap();
    assert_eq!(one_group.groups.len(), 1);
    assert_eq!(one_group.keep_ids(), vec![c.id]);
}

#[test]
fn durations_parse_and_print_in_restic_syntax() {
    let d: RetentionDuration = "1y2m3d4h".parse().unwrap();
    assert_eq!(
        d,
        RetentionDuration {
            years: 1,
            months: 2,
            days: 3,
            hours: 4
        }
    );
    assert_eq!(d.to_string(), "1y2m3d4h");
    assert_eq!("36h".parse::<RetentionDuration>().unwrap().hours, 36);
    for bad in ["", "7", "d", "7w", "1y-2m"] {
        assert!(
            bad.parse::<RetentionDuration>().is_err(),
            "{bad:?} must not parse"
        );
    }
}

#[test]
fn group_by_rejects_unknown_fields() {
    assert_eq!(
        "host,tags".parse::<GroupBy>().unwrap(),
        GroupBy {
            host: true,
            paths: false,
            tags: true
        }
    );
    assert!("hostname".parse::<GroupBy>().is_err());
}
