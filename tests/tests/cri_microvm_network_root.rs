//! A microvm pod's network: CNI makes it in the pod's network namespace as
//! for every handler, and the VM gets it through a tap joined to the pod's
//! interface by `tc` redirection. The pod IP is the guest's: a microvm pod
//! and a native pod on the same bridge reach each other over TCP, a hostPort
//! reaches the guest from the host, and the VM is sized from the pod's
//! limits. Needs root, QEMU, the guest (`make microvm-deps microvm-guest`),
//! containernetworking-plugins and iproute2; traffic stays on the test's
//! bridge. One VM at a time (two cores run TCG guests).

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use caisson_tests::cni::TestNetwork;
use caisson_tests::daemon::{container_config, wait_until, Caissond};
use caisson_tests::microvm::turn;
use caisson_tests::require;
use k8s_cri::v1 as cri;

/// The pinned network namespaces of caissond's pods.
fn pinned_netns(d: &Caissond) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(d.dir.path().join("run/netns"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Runs iproute2 in the network namespace at `netns`.
fn in_netns(netns: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(args)
        .output()
        .expect("nsenter (util-linux)");
    assert!(
        out.status.success(),
        "{args:?} in {}: {}",
        netns.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The MAC address in `ip -o link show` output.
fn mac_in(link: &str) -> String {
    link.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no link/ether in {link}"))
        .to_string()
}

/// The answer of a one-shot `nc -l` server in container `server`, read by
/// `nc` in container `client`.
fn tcp_answer(d: &Caissond, client: &str, ip: &str, port: &str) -> String {
    wait_until(
        &format!("{ip}:{port} to answer"),
        Duration::from_secs(60),
        || {
            let out = d.try_exec(client, &["nc", "-w", "5", ip, port], 20).ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.exit_code == 0 && !text.is_empty()).then_some(text)
        },
    )
}

#[test]
fn a_microvm_pod_and_a_native_pod_share_the_bridge_and_a_host_port_reaches_the_guest() {
    require::microvm();
    let _turn = turn();
    let net = TestNetwork::new("cst-vmnet", "cst-vmnet0", "10.231.7").with_portmap();
    let d = Caissond::start("");
    d.import_busybox();
    // The bridge as the pods' default gateway: a route the guest must get.
    let conflist = net
        .conflist(r#", {"type": "portmap", "capabilities": {"portMappings": true}}"#)
        .replace(
            r#""isGateway": true"#,
            r#""isGateway": true, "isDefaultGateway": true"#,
        );
    assert!(conflist.contains("isDefaultGateway"));
    std::fs::create_dir_all(d.cni_conf_dir()).unwrap();
    std::fs::write(d.cni_conf_dir().join("10-cst-vmnet.conflist"), conflist).unwrap();

    let mut vm_config = d.pod_config("vmpod");
    vm_config.hostname = "vmpod-host".into();
    vm_config.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["ns.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    vm_config.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: 18941,
        host_ip: net.gateway(),
    }];
    let vm_pod = d.run_pod_with_handler(&vm_config, "microvm");
    let vm_main = d.create_started_container(
        &vm_pod,
        &vm_config,
        container_config("main", &["sleep", "100000"]),
    );
    let native_config = d.pod_config("nativepod");
    let native_pod = d.run_pod(&native_config);
    let native_main = d.create_started_container(
        &native_pod,
        &native_config,
        container_config("main", &["sleep", "100000"]),
    );
    let vm_ip = d.pod_status(&vm_pod).network.unwrap().ip;
    let native_ip = d.pod_status(&native_pod).network.unwrap().ip;
    for ip in [&vm_ip, &native_ip] {
        assert!(ip.starts_with("10.231.7."), "pod IP {ip:?} off the subnet");
    }

    // The pod IP, MTU and default route are the guest's, on an eth0 that
    // has the pod interface's MAC address; the guest's kernel is not the
    // host's.
    let uname = d.exec(&vm_main, &["uname", "-r"]);
    assert_ne!(
        uname.trim(),
        String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout)
            .unwrap()
            .trim()
    );
    let addr = d.exec(&vm_main, &["ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(addr.contains(&format!("inet {vm_ip}/24")), "{addr}");
    let route = d.exec(&vm_main, &["ip", "route"]);
    assert!(
        route.contains(&format!("default via {} dev eth0", net.gateway())),
        "{route}"
    );
    let guest_link = d.exec(&vm_main, &["ip", "-o", "link", "show", "eth0"]);
    let netns = pinned_netns(&d);
    let vm_netns = netns
        .iter()
        .find(|ns| in_netns(ns, &["ip", "-4", "-o", "addr", "show"]).contains(&format!("{vm_ip}/")))
        .expect("the microvm pod's netns");
    let host_link = in_netns(vm_netns, &["ip", "-o", "link", "show", "eth0"]);
    assert_eq!(mac_in(&guest_link), mac_in(&host_link));
    let mtu = |l: &str| {
        l.split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .map(str::to_string)
    };
    assert_eq!(
        mtu(&guest_link),
        mtu(&host_link),
        "{guest_link} / {host_link}"
    );
    // On the host: a tap in the pod's netns, tc redirecting both ways.
    in_netns(vm_netns, &["ip", "-o", "link", "show", "tap0_caisson"]);
    for (dev, to) in [("eth0", "tap0_caisson"), ("tap0_caisson", "eth0")] {
        let filters = in_netns(vm_netns, &["tc", "filter", "show", "dev", dev, "ingress"]);
        assert!(
            filters.contains(&format!("Egress Redirect to device {to}")),
            "{dev}: {filters}"
        );
    }
    // DNS config and /etc/hosts reach the guest's containers.
    assert_eq!(
        d.exec(&vm_main, &["cat", "/etc/resolv.conf"]),
        "nameserver 10.96.0.10\nsearch ns.svc.cluster.local\noptions ndots:5\n"
    );
    let hosts = d.exec(&vm_main, &["cat", "/etc/hosts"]);
    assert!(hosts.contains(&format!("{vm_ip}\tvmpod-host")), "{hosts}");

    // TCP both ways between the guest and the native pod.
    d.create_started_container(
        &vm_pod,
        &vm_config,
        container_config(
            "listener",
            &["sh", "-c", "echo from-the-vm | nc -l -p 7070"],
        ),
    );
    assert_eq!(
        tcp_answer(&d, &native_main, &vm_ip, "7070"),
        "from-the-vm\n"
    );
    d.create_started_container(
        &native_pod,
        &native_config,
        container_config(
            "listener",
            &["sh", "-c", "echo from-the-native-pod | nc -l -p 7071"],
        ),
    );
    assert_eq!(
        tcp_answer(&d, &vm_main, &native_ip, "7071"),
        "from-the-native-pod\n"
    );

    // The hostPort reaches the guest's server from the host.
    d.create_started_container(
        &vm_pod,
        &vm_config,
        container_config(
            "web",
            &["sh", "-c", "echo hello-from-the-guest | nc -l -p 8080"],
        ),
    );
    let target = format!("{}:18941", net.gateway());
    let got = wait_until("the hostPort answers", Duration::from_secs(60), || {
        let mut s =
            std::net::TcpStream::connect_timeout(&target.parse().unwrap(), Duration::from_secs(2))
                .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        (!text.is_empty()).then_some(text)
    });
    assert_eq!(got, "hello-from-the-guest\n");

    // The pod's network figures count that traffic.
    let stats = d.pod_stats(&vm_pod);
    let iface = stats
        .linux
        .and_then(|l| l.network)
        .and_then(|n| n.default_interface)
        .expect("network stats of the microvm pod");
    assert_eq!(iface.name, "eth0");
    assert!(
        iface.rx_bytes.unwrap().value > 0 && iface.tx_bytes.unwrap().value > 0,
        "{iface:?}"
    );

    for pod in [&vm_pod, &native_pod] {
        d.stop_pod(pod);
        d.remove_pod(pod);
    }
    assert!(net.allocations().is_empty(), "{:?}", net.allocations());
    assert!(net.ports().is_empty(), "veths left: {:?}", net.ports());
    assert!(pinned_netns(&d).is_empty(), "{:?}", pinned_netns(&d));
    assert!(
        net.iptables_rules().is_empty(),
        "{:?}",
        net.iptables_rules()
    );
}

#[test]
fn the_vm_is_sized_from_the_pods_limits() {
    require::microvm();
    let _turn = turn();
    let d = Caissond::start("");
    d.import_busybox();
    let mut config = d.pod_config("sized");
    // 1.5 CPUs and 256 MiB for the pod: 2 vCPUs (the host has 2), and the
    // handler's 512 MiB for the guest plus 256.
    config.linux.get_or_insert_with(Default::default).resources =
        Some(cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 150_000,
            memory_limit_in_bytes: 256 << 20,
            ..Default::default()
        });
    let pod = d.run_pod_with_handler(&config, "microvm");
    let c = d.create_started_container(&pod, &config, container_config("c", &["sleep", "100000"]));
    let host_cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(d.exec(&c, &["nproc"]).trim(), 2.min(host_cpus).to_string());
    let meminfo = d.exec(&c, &["cat", "/proc/meminfo"]);
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("MemTotal");
    // The kernel keeps some of the 768 MiB for itself.
    assert!(
        (600 * 1024..=768 * 1024).contains(&total_kib),
        "MemTotal {total_kib} kB for a 768 MiB VM"
    );
    let qemu = caisson_tests::microvm::qemus_with(&format!("caisson-{}", &pod[..12]));
    assert_eq!(qemu.len(), 1, "the pod's QEMU: {qemu:?}");
    assert!(qemu[0].1.contains("-m 768M"), "{}", qemu[0].1);
    d.stop_pod(&pod);
    d.remove_pod(&pod);
}
