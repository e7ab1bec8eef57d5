use super::*;

const MIB: u64 = 1 << 20;
const TARGET: u64 = 16 * MIB;

fn data_pack(used: u64, unused: u64) -> PackInfo {
    PackInfo {
        used_blobs: u64::from(used > 0) * 10,
        unused_blobs: u64::from(unused > 0) * 10,
        used_size: used,
        unused_size: unused,
        has_data: true,
        ..Default::default()
    }
}

fn tree_pack(used: u64, unused: u64) -> PackInfo {
    PackInfo {
        has_data: false,
        has_tree: true,
        ..data_pack(used, unused)
    }
}

/// Runs the decision on packs numbered 1.. with the given accounting, all present.
fn decide(packs: &[PackInfo], opts: PruneOptions) -> PackDecisions {
    let info: BTreeMap<Id, PackInfo> = packs
        .iter()
        .enumerate()
        .map(|(i, p)| (Id([i as u8 + 1; 32]), p.clone()))
        .collect();
    let listing = info.iter().map(|(id, p)| (*id, p.total())).collect();
    let mut counts = PruneCounts::default();
    for p in packs {
        counts.used_bytes += p.used_size;
        counts.unused_bytes += p.unused_size;
    }
    decide_packs(&info, &listing, &opts, TARGET, &mut counts).unwrap()
}

fn ids(nums: &[u8]) -> BTreeSet<Id> {
    nums.iter().map(|&n| Id([n; 32])).collect()
}

#[test]
fn fully_used_packs_are_kept_and_unused_packs_removed() {
    let d = decide(
        &[data_pack(TARGET, 0), data_pack(0, TARGET)],
        PruneOptions::default(),
    );
    assert_eq!(d.keep, ids(&[1]));
    assert_eq!(d.remove, ids(&[2]));
    assert!(d.repack.is_empty());
}

#[test]
fn partly_used_data_packs_are_repacked_most_wasteful_first_until_under_the_limit() {
    // 40 MiB used in total; 5% of the result is 40 * 5/95 = 2.1 MiB unused allowed.
    let packs = [
        data_pack(15 * MIB, MIB),     // 1: 6% unused
        data_pack(12 * MIB, 4 * MIB), // 2: 25% unused
        data_pack(13 * MIB, 3 * MIB), // 3: 19% unused
    ];
    let d = decide(&packs, PruneOptions::default());
    // 8 MiB unused: repacking 2 leaves 4, repacking 3 leaves 1 (< 2.1): 1 stays.
    assert_eq!(d.repack, ids(&[2, 3]));
    assert_eq!(d.keep, ids(&[1]));
    let all = decide(
        &packs,
        PruneOptions {
            max_unused_percent: 0.0,
            repack_small: false,
        },
    );
    assert_eq!(all.repack, ids(&[1, 2, 3]));
    let lax = decide(
        &packs,
        PruneOptions {
            max_unused_percent: 50.0,
            repack_small: false,
        },
    );
    assert!(lax.repack.is_empty(), "{lax:?}");
}

#[test]
fn partly_used_tree_packs_are_always_repacked() {
    let d = decide(
        &[data_pack(100 * MIB, 0), tree_pack(MIB, 10)],
        PruneOptions {
            max_unused_percent: 99.0,
            repack_small: false,
        },
    );
    assert_eq!(d.repack, ids(&[2]));
}

#[test]
fn packs_holding_uncompressed_trees_are_repacked_even_when_fully_used() {
    let mut p = tree_pack(MIB, 0);
    p.uncompressed_tree = true;
    let d = decide(&[p], PruneOptions::default());
    assert_eq!(d.repack, ids(&[1]));
}

#[test]
fn a_few_small_packs_are_left_alone_but_ten_are_merged() {
    let small = data_pack(100 << 10, 0);
    let d = decide(&vec![small.clone(); 9], PruneOptions::default());
    assert_eq!(d.keep.len(), 9);
    let d = decide(&vec![small.clone(); 10], PruneOptions::default());
    assert_eq!(d.repack.len(), 10);
    // With repack_small, "small" means below 80% of the target size.
    let mid = data_pack(8 * MIB, 0);
    assert_eq!(
        decide(&vec![mid.clone(); 10], PruneOptions::default())
            .keep
            .len(),
        10
    );
    let opts = PruneOptions {
        max_unused_percent: 5.0,
        repack_small: true,
    };
    assert_eq!(decide(&vec![mid; 10], opts).repack.len(), 10);
}

#[test]
fn a_pack_whose_size_disagrees_with_the_index_stops_the_plan() {
    let info: BTreeMap<Id, PackInfo> = [(Id([1; 32]), data_pack(MIB, 0))].into();
    let listing = [(Id([1; 32]), MIB + 1)].into();
    let err = decide_packs(
        &info,
        &listing,
        &PruneOptions::default(),
        TARGET,
        &mut PruneCounts::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("nothing was changed"), "{err}");
}

#[test]
fn missing_packs_without_needed_blobs_are_dropped_from_the_index() {
    let info: BTreeMap<Id, PackInfo> = [(Id([1; 32]), data_pack(0, MIB))].into();
    let d = decide_packs(
        &info,
        &BTreeMap::new(),
        &PruneOptions::default(),
        TARGET,
        &mut PruneCounts::default(),
    )
    .unwrap();
    assert_eq!(d.missing, ids(&[1]));
}
