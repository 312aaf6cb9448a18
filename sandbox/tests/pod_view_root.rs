//! A build's view of the node's mounts (`host::pod_view`) against the real
//! kernel (needs root): its own pod's mounts and none of another pod's,
//! mounts the node made since, the node's namespace back afterwards, and a
//! container of the native backend built in it.

use std::fs;
use std::path::{Path, PathBuf};

use caisson_sandbox::backend::native::NativeBackend;
use caisson_sandbox::backend::{Backend, Stdio, TaskKind};
use caisson_sandbox::host::mountinfo;
use caisson_sandbox::host::pod_view::{pin_roots, unpin_roots, PodView};
use caisson_tests::daemon::Caissond;
use caisson_tests::require;
use nix::mount::{MntFlags, MsFlags};
use oci_spec::runtime::MountBuilder;

mod support;

use support::unique;

type Harness = support::Harness<NativeBackend>;

/// A node's pods' mounts in `dir`: `pods/<pod>/shm` tmpfs (each holding a
/// file named after its pod) and `netns/<pod>` pins, below `pods` and
/// `netns` made mount points by [`pin_roots`]. Unmounts all of it when
/// dropped, even if the test failed.
struct Node {
    roots: Vec<PathBuf>,
    mounted: Vec<PathBuf>,
}

impl Node {
    fn new(dir: &Path, pods: &[&str]) -> Node {
        let roots = vec![dir.join("pods"), dir.join("netns")];
        for root in &roots {
            fs::create_dir_all(root).unwrap();
        }
        let pinned = pin_roots(&roots);
        assert_eq!(pinned, roots, "both made mount points");
        let mut node = Node {
            roots,
            mounted: Vec::new(),
        };
        for pod in pods {
            let shm = node.roots[0].join(pod).join("shm");
            node.tmpfs(&shm);
            fs::write(shm.join(pod), pod).unwrap();
            let pin = node.roots[1].join(pod);
            fs::write(&pin, "").unwrap();
            nix::mount::mount(
                Some("/proc/self/ns/net"),
                &pin,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .unwrap();
            node.mounted.push(pin);
        }
        node
    }

    fn tmpfs(&mut self, at: &Path) {
        fs::create_dir_all(at).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m"),
        )
        .unwrap();
        self.mounted.push(at.to_path_buf());
    }

    fn view(&self, bundle: &Path) -> PodView {
        PodView::for_bundle(&self.roots, bundle).unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for m in self.mounted.iter().rev() {
            let _ = nix::mount::umount2(m, MntFlags::MNT_DETACH);
        }
        unpin_roots(&self.roots);
    }
}

/// The mount points `view` shows `f`'s thread, read in it; and whether the
/// thread's mount namespace and working directory were its own again after.
fn seen_in(view: &PodView) -> (Vec<PathBuf>, bool) {
    let view = view.clone();
    std::thread::spawn(move || {
        let ns = || fs::read_link("/proc/thread-self/ns/mnt").unwrap();
        let before = (ns(), std::env::current_dir().unwrap());
        let seen = view.run(|| {
            let text = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
            mountinfo::parse(&text)
                .into_iter()
                .map(|m| m.mount_point)
                .collect::<Vec<_>>()
        });
        let after = (ns(), std::env::current_dir().unwrap());
        (seen, before == after)
    })
    .join()
    .unwrap()
}

#[test]
fn a_pods_view_has_its_mounts_and_not_another_pods() {
    require::root("mount namespaces");
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    let mut node = Node::new(&dir, &["mine", "other"]);
    let view = node.view(&dir.join("pods/mine/containers/c1"));
    let (pods, netns) = (dir.join("pods"), dir.join("netns"));

    let node_table = || {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .map(|l| l.split(' ').take(5).collect::<Vec<_>>().join(" "))
            // Other tests mount and unmount meanwhile.
            .filter(|l| l.contains(&*dir.display().to_string()))
            .collect::<Vec<_>>()
    };
    let before = node_table();
    let (seen, restored) = seen_in(&view);
    assert!(
        restored,
        "the thread's mount namespace and cwd are its own again"
    );
    assert_eq!(
        node_table(),
        before,
        "nothing the view did reached the node's table"
    );
    for kept in [pods.join("mine/shm"), netns.join("mine")] {
        assert!(seen.contains(&kept), "{} kept: {seen:?}", kept.display());
    }
    for hidden in [
        pods.join("other/shm"),
        netns.join("other"),
        pods.clone(),
        netns.clone(),
    ] {
        assert!(
            !seen.contains(&hidden),
            "{} hidden: {seen:?}",
            hidden.display()
        );
    }
    // The node's table is as it was.
    let node_now: Vec<PathBuf> = mountinfo::read()
        .unwrap()
        .into_iter()
        .map(|m| m.mount_point)
        .collect();
    for m in [
        pods.join("other/shm"),
        netns.join("other"),
        pods.join("mine/shm"),
        pods.clone(),
    ] {
        assert!(
            node_now.contains(&m),
            "{} still mounted on the node",
            m.display()
        );
    }

    // A mount the node makes later (a volume kubelet mounts after the pod
    // started) is in the next view.
    node.tmpfs(&pods.join("mine/late"));
    let (seen, _) = seen_in(&view);
    assert!(seen.contains(&pods.join("mine/late")), "{seen:?}");

    // Roots that are not mount points hide nothing, and the build still runs.
    let unpinned = PodView {
        hide: vec![dir.join("pods/mine")],
        keep: vec![dir.join("pods/mine/none")],
    };
    let (seen, restored) = seen_in(&unpinned);
    assert!(restored);
    assert!(seen.contains(&pods.join("other/shm")), "{seen:?}");
}

#[test]
fn a_root_with_mounts_below_it_is_not_pinned_and_a_busy_root_stays_pinned() {
    require::root("mounts");
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    // Pods of a caissond from before pinning: a bind now would cover their
    // mounts, so the dir is left as it is.
    let old = dir.join("old");
    let mut node = Node {
        roots: vec![],
        mounted: vec![],
    };
    node.tmpfs(&old.join("p1/shm"));
    assert_eq!(pin_roots(std::slice::from_ref(&old)), Vec::<PathBuf>::new());
    assert_eq!(Caissond::mounts_at(&old), 0, "not made a mount point");

    // A mount of its own at the dir (an operator's tmpfs) is not caissond's.
    let tmpfs = dir.join("tmpfs");
    node.tmpfs(&tmpfs);
    assert_eq!(
        pin_roots(std::slice::from_ref(&tmpfs)),
        Vec::<PathBuf>::new()
    );
    assert_eq!(Caissond::mounts_at(&tmpfs), 1);

    // Pinned once, found pinned the next time (one mount, not two); kept
    // while a pod's mount is below it, unmounted once none is.
    let new = dir.join("new");
    fs::create_dir_all(&new).unwrap();
    // Unpinned when the test ends, whatever happens.
    node.roots.push(new.clone());
    for _ in 0..2 {
        assert_eq!(pin_roots(std::slice::from_ref(&new)), vec![new.clone()]);
        assert_eq!(Caissond::mounts_at(&new), 1);
    }
    node.tmpfs(&new.join("p2/shm"));
    unpin_roots(std::slice::from_ref(&new));
    assert_eq!(Caissond::mounts_at(&new), 1, "a pod's mount below: kept");
    nix::mount::umount2(&new.join("p2/shm"), MntFlags::MNT_DETACH).unwrap();
    unpin_roots(std::slice::from_ref(&new));
    assert_eq!(Caissond::mounts_at(&new), 0, "no pod left: unmounted");
}

#[test]
fn a_container_built_in_its_pods_view_sees_none_of_another_pods_mounts() {
    let mut h = Harness::new();
    let node = Node::new(&h.dir.path().canonicalize().unwrap(), &["mine", "other"]);
    let pods = node.roots[0].clone();
    // A createContainer hook runs in the container's mount namespace before
    // pivot_root (a copy of the one its build ran in) and writes out its
    // mount table.
    let dir = h.dir.path().to_path_buf();
    let table = |name: &str| dir.join(format!("{name}.mountinfo"));
    let bundle_in = |name: &str, bind_pods: bool| {
        let out = table(name);
        let bundle = h.bundle(&format!("pods/mine/containers/{name}"), &["true"], |spec| {
            let hook = oci_spec::runtime::HookBuilder::default()
                .path("/bin/sh")
                .args(vec![
                    "sh".to_string(),
                    "-c".to_string(),
                    format!("cat /proc/self/mountinfo > {}", out.display()),
                ])
                .build()
                .unwrap();
            let hooks = oci_spec::runtime::HooksBuilder::default()
                .create_container(vec![hook])
                .build()
                .unwrap();
            spec.set_hooks(Some(hooks));
            if bind_pods {
                // A hostPath of the whole pods dir: it must show what it
                // shows on the node.
                let mut mounts = spec.mounts().clone().unwrap();
                mounts.push(
                    MountBuilder::default()
                        .destination("/pods")
                        .typ("bind")
                        .source(pods.clone())
                        .options(vec!["rbind".to_string(), "ro".to_string()])
                        .build()
                        .unwrap(),
                );
                spec.set_mounts(Some(mounts));
            }
        });
        (unique(name), bundle)
    };
    let seen_by = |h: &Harness, name: &str, (id, bundle): (String, PathBuf)| {
        h.create(&id, &bundle, TaskKind::Sandbox, Stdio::default());
        h.backend.start(&id).unwrap();
        assert_eq!(h.wait_exit(&id, None).status, 0);
        h.delete(&id).unwrap();
        let text = fs::read_to_string(table(name)).unwrap();
        mountinfo::parse(&text)
            .into_iter()
            .map(|m| m.mount_point)
            .collect::<Vec<_>>()
    };
    let (theirs, mine) = (pods.join("other/shm"), pods.join("mine/shm"));
    let bundles = [
        bundle_in("node", false),
        bundle_in("view", false),
        bundle_in("bind", true),
    ];
    let [in_node, in_view, binding] = bundles;
    // Without the view, the test can fail: the other pod's mount is there.
    let seen = seen_by(&h, "node", in_node);
    assert!(seen.contains(&theirs) && seen.contains(&mine), "{seen:?}");
    h.backend.set_pod_mount_roots(node.roots.clone());
    let seen = seen_by(&h, "view", in_view);
    assert!(seen.contains(&mine), "its own pod's shm: {seen:?}");
    assert!(!seen.contains(&theirs), "not the other pod's: {seen:?}");
    let seen = seen_by(&h, "bind", binding);
    assert!(
        seen.contains(&theirs),
        "a bind of the pods dir sees the node's: {seen:?}"
    );
    drop(node);
}
