use std::sync::OnceLock;

use proptest::prelude::*;

use super::*;
use crate::topology::fixture::{arm_node, big_node, gpu_node, laptop};

fn policy(map: &str, bind: Option<&str>) -> Policy {
    Policy { map: map.parse().unwrap(), bind: bind.map(|b| b.parse().unwrap()), ..Policy::default() }
}

fn ranks(n: u32) -> Vec<u32> {
    (0..n).collect()
}

fn cpus(p: &[RankPlace]) -> Vec<String> {
    p.iter().map(|r| r.cpus.to_string()).collect()
}

#[test]
fn map_by_policy_grammar() {
    let m = |s: &str| s.parse::<MapPolicy>();
    assert_eq!(m("core").unwrap().obj, MapObj::Core);
    assert_eq!(m("socket:PE=2").unwrap(), MapPolicy { obj: MapObj::Package, pe: Some(2), ..MapPolicy::default() });
    assert_eq!(m("ppr:2:socket:pe=2").unwrap().obj, MapObj::Ppr(2, ObjKind::Package));
    assert_eq!(m(":PE=4").unwrap().pe, Some(4));
    assert_eq!(m("PE=4").unwrap().pe, Some(4));
    assert_eq!(m("node:span").unwrap(), MapPolicy { by_node: true, span: true, ..MapPolicy::default() });
    assert_eq!(m(":OVERSUBSCRIBE").unwrap().oversubscribe, Some(true));
    assert_eq!(m("ppr:4:node:PE=8").unwrap().obj, MapObj::Ppr(4, ObjKind::Node));
    assert_eq!(m("corner").unwrap_err(), PolicyError::MapObject("corner".into()));
    assert!(matches!(m("ppr:0:core"), Err(PolicyError::Ppr(_))));
    assert!(matches!(m("ppr:2:gpu"), Err(PolicyError::Ppr(_))));
    assert_eq!(m("core:PE=x").unwrap_err(), PolicyError::Pe("x".into()));
    assert_eq!(m("core:FAST").unwrap_err(), PolicyError::Modifier("FAST".into()));
}

#[test]
fn bind_to_grammar() {
    assert_eq!("socket".parse::<BindTo>().unwrap(), BindTo::Package);
    assert_eq!("none".parse::<BindTo>().unwrap(), BindTo::None);
    let u = "user:0+1,2-3".parse::<BindTo>().unwrap();
    assert_eq!(u.to_string(), "user:0-1,2-3");
    assert_eq!(u, "user:0-1,2+3".parse().unwrap());
    assert!(matches!("user:".parse::<BindTo>(), Err(PolicyError::UserList(_))));
    assert!(matches!("board".parse::<BindTo>(), Err(PolicyError::BindTo(_))));
}

#[test]
fn default_binds_each_rank_to_its_core_in_order() {
    let t = big_node().topology();
    let p = place(&t, &Policy::default(), &ranks(4), &[]).unwrap();
    assert_eq!(cpus(&p), ["0,32", "1,33", "2,34", "3,35"]);
    assert!(p.iter().all(|r| r.bound));
}

#[test]
fn default_leaves_an_oversubscribed_node_unbound() {
    let t = big_node().topology();
    let p = place(&t, &Policy::default(), &ranks(40), &[]).unwrap();
    assert!(p.iter().all(|r| !r.bound && r.cpus == t.universe));
}

#[test]
fn map_by_package_deals_round_robin() {
    let t = big_node().topology();
    let p = place(&t, &policy("package", None), &ranks(3), &[]).unwrap();
    assert_eq!(cpus(&p), ["0,32", "16,48", "1,33"]);
    let p = place(&t, &policy("numa", Some("numa")), &ranks(2), &[]).unwrap();
    assert_eq!(cpus(&p), ["0-7,32-39", "8-15,40-47"]);
    let p = place(&t, &policy("l3cache", Some("l3cache")), &ranks(5), &[]).unwrap();
    assert_eq!(p[4].cpus, p[0].cpus);
}

#[test]
fn ppr_with_pe_fills_each_package_in_turn() {
    let t = big_node().topology();
    let p = place(&t, &policy("ppr:2:package:PE=4", None), &ranks(4), &[]).unwrap();
    assert_eq!(cpus(&p), ["0-3,32-35", "4-7,36-39", "16-19,48-51", "20-23,52-55"]);
    assert_eq!(ppr_ranks(&t, 2, ObjKind::Package), 4);
    let err = place(&t, &policy("ppr:2:package", None), &ranks(5), &[]).unwrap_err();
    assert!(matches!(err, PlaceError::PprTooMany { max: 4, .. }), "{err}");
    let err = place(&t, &policy("ppr:9:numa:PE=1", Some("core")), &ranks(9), &[]).unwrap_err();
    assert!(matches!(err, PlaceError::PprTooFewCpus { have: 8, .. }), "{err}");
}

#[test]
fn rank_by_reorders_the_same_places() {
    let t = big_node().topology();
    let by = |map: &str, rank_by| Policy { rank_by: Some(rank_by), ..policy(map, None) };
    // Open MPI: --map-by package --rank-by core numbers ranks core after core.
    let p = place(&t, &by("package", ObjKind::Core), &ranks(4), &[]).unwrap();
    assert_eq!(cpus(&p), ["0,32", "1,33", "16,48", "17,49"]);
    // --map-by core --rank-by package: consecutive ranks alternate packages.
    let p = place(&t, &by("core", ObjKind::Package), &ranks(4), &[]).unwrap();
    assert_eq!(cpus(&p), ["0,32", "1,33", "2,34", "3,35"], "4 cores of package 0: one group");
    let p = place(&t, &by("core", ObjKind::Numa), &ranks(16), &[]).unwrap();
    assert_eq!(cpus(&p)[..3], ["0,32", "8,40", "1,33"]);
    let mut sorted = cpus(&p);
    sorted.sort();
    let mut plain = cpus(&place(&t, &policy("core", None), &ranks(16), &[]).unwrap());
    plain.sort();
    assert_eq!(sorted, plain, "the same places");
}

#[test]
fn pe_larger_than_a_package_is_one_error() {
    let t = big_node().topology();
    let err = place(&t, &policy("slot:PE=17", None), &ranks(1), &[]).unwrap_err();
    assert_eq!(err, PlaceError::PeTooLarge { pe: 17, unit: "core", obj: "package", most: 16 });
    assert!(err.to_string().contains("use PE=16 or less"), "{err}");
    let err = place(&t, &policy("numa:PE=9", None), &ranks(1), &[]).unwrap_err();
    assert!(matches!(err, PlaceError::PeTooLarge { obj: "numa", most: 8, .. }), "{err}");
}

#[test]
fn bind_to_core_with_more_ranks_than_cores_is_one_error() {
    let t = big_node().topology();
    let err = place(&t, &policy("slot", Some("core")), &ranks(33), &[]).unwrap_err();
    assert!(matches!(err, PlaceError::TooFewCpus { need: 33, have: 32, .. }), "{err}");
    assert!(err.to_string().contains("--bind-to none"), "{err}");
    let err = place(&t, &policy("slot:PE=2", None), &ranks(17), &[]).unwrap_err();
    assert!(err.to_string().contains("with PE=2 need 34 cores"), "{err}");
    // Objects bigger than a core may be shared.
    assert!(place(&t, &policy("slot", Some("package")), &ranks(100), &[]).is_ok());
}

#[test]
fn hwthreads_as_units() {
    let t = big_node().topology();
    let pol = Policy { hwthreads: true, ..Policy::default() };
    let p = place(&t, &pol, &ranks(64), &[]).unwrap();
    assert!(p.iter().all(|r| r.cpus.len() == 1));
    assert_eq!(cpus(&p)[..3], ["0", "32", "1"]);
    let p = place(&t, &policy("hwthread", Some("core")), &ranks(2), &[]).unwrap();
    assert_eq!(cpus(&p), ["0,32", "0,32"], "two threads of one core, each bound to the core");
    let p = place(&t, &policy("core", Some("hwthread")), &ranks(2), &[]).unwrap();
    assert_eq!(cpus(&p), ["0", "1"]);
}

#[test]
fn cgroup_restricted_sets_stay_inside() {
    let t = big_node().topology_with(&CpuSet::parse_list("4-11,36-43").unwrap());
    let p = place(&t, &policy("numa", Some("numa")), &ranks(4), &[]).unwrap();
    assert_eq!(cpus(&p), ["4-7,36-39", "8-11,40-43", "4-7,36-39", "8-11,40-43"]);
    let p = place(&t, &Policy::default(), &ranks(8), &[]).unwrap();
    assert_eq!(cpus(&p)[0], "4,36");
    let err = place(&t, &policy("slot", Some("user:0+1,4")), &ranks(2), &[]).unwrap_err();
    assert!(err.to_string().contains("rank 0: --bind-to user:0-1,4 includes CPUs 0-1"), "{err}");
    let p = place(&t, &policy("slot", Some("user:4+5,6")), &ranks(3), &[]).unwrap();
    assert_eq!(cpus(&p), ["4-5", "6", "4-5"]);
}

#[test]
fn laptop_picture() {
    let t = laptop().topology();
    let p = place(&t, &Policy::default(), &ranks(2), &[]).unwrap();
    assert_eq!(picture(&t, &p[1].cpus), "[../BB/../..]");
    let t = big_node().topology();
    let p = place(&t, &policy("package", None), &ranks(2), &[]).unwrap();
    let pic = picture(&t, &p[1].cpus);
    assert!(pic.starts_with("[../") && pic.contains("][BB/.."), "{pic}");
    assert_eq!(pic.matches('[').count(), 2);
}

#[test]
fn arm_clusters_fill_one_cluster_first() {
    let t = arm_node().topology();
    let p = place(&t, &Policy::default(), &ranks(5), &[]).unwrap();
    assert_eq!(cpus(&p), ["0", "4", "8", "12", "1"]);
}

#[test]
fn gpus_nearest_first_and_not_shared_while_enough() {
    let t = gpu_node().topology();
    let pol = Policy { gpus_per_rank: 1, ..policy("package", None) };
    let p = place(&t, &pol, &ranks(8), &[]).unwrap();
    let mut all: Vec<usize> = p.iter().flat_map(|r| r.gpus.clone()).collect();
    for r in &p {
        assert_eq!(r.gpus.len(), 1);
        assert_eq!(t.numa_of(&r.cpus), vec![t.gpus[r.gpus[0]].numa.unwrap()], "rank {}", r.rank);
    }
    all.sort();
    assert_eq!(all, (0..8).collect::<Vec<_>>());
    // Twice as many ranks as GPUs: each GPU serves two ranks, still on their own NUMA node.
    let p = place(&t, &pol, &ranks(16), &[]).unwrap();
    for g in 0..8 {
        assert_eq!(p.iter().filter(|r| r.gpus == [g]).count(), 2);
    }
    assert!(p.iter().all(|r| t.numa_of(&r.cpus) == vec![t.gpus[r.gpus[0]].numa.unwrap()]));
    let pol2 = Policy { gpus_per_rank: 2, ..Policy::default() };
    let p = place(&t, &pol2, &ranks(4), &[]).unwrap();
    assert_eq!(p[0].gpus, [0, 1]);
    let err = place(&t, &Policy { gpus_per_rank: 9, ..Policy::default() }, &ranks(1), &[]).unwrap_err();
    assert_eq!(err, PlaceError::TooFewGpus { want: 9, have: 8 });
    let err = place(&big_node().topology(), &pol, &ranks(1), &[]).unwrap_err();
    assert_eq!(err, PlaceError::NoGpus { want: 1 });
}

#[test]
fn rank_file_slots_are_cpus_or_cores_of_a_package() {
    let t = big_node().topology();
    let cores = Slot::Cores(vec![(1, vec![0, 1])]);
    let pol = Policy { rank_slots: vec![(7, cores), (3, Slot::Cpus(CpuSet::parse_list("0-3").unwrap()))], ..Policy::default() };
    let p = place(&t, &pol, &[3, 7], &[]).unwrap();
    assert_eq!(p[0].cpus, CpuSet::parse_list("0-3").unwrap());
    let want: CpuSet = t.objects(ObjKind::Package)[1].clone();
    assert!(p[1].cpus.difference(&want).is_empty() && p[1].cpus.iter().count() == 4, "two cores of package 1, both threads: {}", p[1].cpus);
    assert_eq!(place(&t, &pol, &[3, 8], &[]).unwrap_err(), PlaceError::NoSlot { rank: 8 });
    let bad = Policy { rank_slots: vec![(0, Slot::Cores(vec![(2, vec![0])]))], ..Policy::default() };
    assert!(matches!(place(&t, &bad, &[0], &[]).unwrap_err(), PlaceError::NoPackage { package: 2, have: 2, .. }));
    let bad = Policy { rank_slots: vec![(0, Slot::Cores(vec![(0, vec![16])]))], ..Policy::default() };
    let both = Policy { rank_slots: vec![(0, Slot::Cores(vec![(0, vec![0]), (1, vec![0])]))], ..Policy::default() };
    assert_eq!(place(&t, &both, &[0], &[]).unwrap()[0].cpus.iter().count(), 4, "a core of each package, both threads");
    assert!(matches!(place(&t, &bad, &[0], &[]).unwrap_err(), PlaceError::NoCore { have: 16, .. }));
}

#[test]
fn overload_allowed_shares_units_and_if_supported_leaves_ranks_unbound() {
    let t = laptop().topology();
    let cores = t.objects(ObjKind::Core).len();
    let n = cores as u32 + 2;
    let strict = Policy { bind: Some(BindTo::Core), ..Policy::default() };
    assert!(matches!(place(&t, &strict, &ranks(n), &[]).unwrap_err(), PlaceError::TooFewCpus { .. }));
    let p = place(&t, &Policy { overload: true, ..strict.clone() }, &ranks(n), &[]).unwrap();
    assert!(p.iter().all(|r| r.bound && r.cpus.iter().count() >= 1));
    assert_eq!(p[0].cpus, p[cores].cpus, "rank {cores} shares rank 0's core");
    let p = place(&t, &Policy { if_supported: true, ..strict }, &ranks(n), &[]).unwrap();
    assert!(p.iter().all(|r| !r.bound && r.cpus == t.universe));
}

#[test]
fn gpu_lists_give_local_rank_i_the_i_th_list() {
    let t = gpu_node().topology();
    let pol = Policy { gpu_lists: vec![vec![3], vec![0, 1]], ..Policy::default() };
    let p = place(&t, &pol, &ranks(5), &[]).unwrap();
    assert_eq!(p.iter().map(|r| r.gpus.clone()).collect::<Vec<_>>(), [vec![3], vec![0, 1], vec![3], vec![0, 1], vec![3]]);
    let err = place(&t, &Policy { gpu_lists: vec![vec![8]], ..Policy::default() }, &ranks(1), &[]).unwrap_err();
    assert_eq!(err, PlaceError::NoSuchGpu { gpu: 8, have: 8 });
}

#[test]
fn nic_nearest_to_the_gpu_spread_among_equals() {
    let t = gpu_node().topology();
    let nics = ["eth0", "eth1", "eth2", "eth3"];
    let p = place(&t, &policy("package", None), &ranks(8), &nics).unwrap();
    let got: Vec<&str> = p.iter().map(|r| nics[r.nic.unwrap()]).collect();
    assert_eq!(got, ["eth0", "eth2", "eth1", "eth3", "eth0", "eth2", "eth1", "eth3"]);
    // Unbound ranks touch every node: plain round-robin, the old rule.
    let p = place(&t, &policy("slot", Some("none")), &ranks(5), &nics).unwrap();
    assert_eq!(p.iter().map(|r| r.nic.unwrap()).collect::<Vec<_>>(), [0, 1, 2, 3, 0]);
    // A GPU on node 1 pulls an unbound rank's NIC there.
    let pol = Policy { gpus_per_rank: 1, bind: Some(BindTo::None), ..Policy::default() };
    let p = place(&t, &pol, &ranks(5), &nics).unwrap();
    assert_eq!(p[4].gpus, [4]);
    assert_eq!(nics[p[4].nic.unwrap()], "eth2");
    // Names the topology does not know (virtual) still get used.
    let p = place(&t, &Policy::default(), &ranks(2), &["bond0"]).unwrap();
    assert_eq!(p[1].nic, Some(0));
}

fn fixtures() -> &'static Vec<Topology> {
    static T: OnceLock<Vec<Topology>> = OnceLock::new();
    T.get_or_init(|| {
        vec![
            big_node().topology(),
            laptop().topology(),
            big_node().topology_with(&CpuSet::parse_list("3-11,35-44,60").unwrap()),
            gpu_node().topology(),
            arm_node().topology(),
        ]
    })
}

fn any_policy() -> impl Strategy<Value = Policy> {
    let map = prop_oneof![
        Just(MapObj::Slot),
        Just(MapObj::Core),
        Just(MapObj::HwThread),
        Just(MapObj::L3),
        Just(MapObj::Numa),
        Just(MapObj::Package),
        (1u32..4, prop_oneof![Just(ObjKind::Package), Just(ObjKind::Numa), Just(ObjKind::L3), Just(ObjKind::Core), Just(ObjKind::Node)])
            .prop_map(|(n, k)| MapObj::Ppr(n, k)),
    ];
    let bind = prop_oneof![
        Just(None),
        Just(Some(BindTo::None)),
        Just(Some(BindTo::HwThread)),
        Just(Some(BindTo::Core)),
        Just(Some(BindTo::L3)),
        Just(Some(BindTo::Numa)),
        Just(Some(BindTo::Package)),
    ];
    let rank_by = proptest::option::of(prop_oneof![Just(ObjKind::Core), Just(ObjKind::L3), Just(ObjKind::Numa), Just(ObjKind::Package)]);
    (map, proptest::option::of(1u32..5), bind, any::<bool>(), 0u32..3, rank_by).prop_map(|(obj, pe, bind, hwthreads, gpus_per_rank, rank_by)| Policy {
        map: MapPolicy { obj, pe, ..MapPolicy::default() },
        bind,
        hwthreads,
        gpus_per_rank,
        gpu_lists: Vec::new(),
        rank_slots: Vec::new(),
        overload: false,
        if_supported: false,
        rank_by,
    })
}

proptest! {
    #[test]
    fn every_set_inside_the_universe_and_deterministic(t in 0usize..5, pol in any_policy(), n in 0u32..80) {
        let topo = &fixtures()[t];
        let nics = ["eth0", "eth1", "eth2", "eth3"];
        let a = place(topo, &pol, &ranks(n), &nics);
        prop_assert_eq!(&a, &place(topo, &pol, &ranks(n), &nics));
        if let Ok(p) = a {
            prop_assert_eq!(p.len(), n as usize);
            for r in &p {
                prop_assert!(!r.cpus.is_empty() && r.cpus.is_subset(&topo.universe), "{:?}", r);
                prop_assert_eq!(r.gpus.len(), pol.gpus_per_rank as usize);
            }
            let unit_bind = matches!(pol.bind, Some(BindTo::Core | BindTo::HwThread))
                || (pol.bind.is_none() && p.iter().all(|r| r.bound));
            let core_units = !pol.hwthreads && pol.map.obj != MapObj::HwThread;
            // Bound to its own units, no rank shares a CPU with another (a hwthread unit bound to
            // its whole core is the one allowed exception).
            if unit_bind && (core_units || pol.bind != Some(BindTo::Core)) {
                for (i, a) in p.iter().enumerate() {
                    for b in &p[i + 1..] {
                        prop_assert!(!a.cpus.intersects(&b.cpus), "{:?} and {:?}", a, b);
                    }
                }
            }
        }
    }

    #[test]
    fn enough_cores_means_bound_by_default(t in 0usize..5, pick in 0usize..100) {
        let topo = &fixtures()[t];
        let n = (pick % topo.count(ObjKind::Core)) as u32 + 1;
        let p = place(topo, &Policy::default(), &ranks(n), &[]).unwrap();
        prop_assert!(p.iter().all(|r| r.bound && r.cpus.len() <= 2));
    }
}
