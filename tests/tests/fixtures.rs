//! The fixtures are deterministic and built from what the issue names:
//! Debian's static busybox with hard-linked applets, and caisson-pause.

use caisson_tests::fixtures::{
    busybox_image, busybox_layer, has_interpreter, pause_binary, pause_image, OciArchive,
};

fn archive_of(spec: &caisson_tests::fixtures::ImageSpec) -> (Vec<u8>, String) {
    let mut archive = OciArchive::new();
    let built = archive.add_image(spec);
    (archive.to_tar(), built.manifest.digest)
}

#[test]
fn busybox_archive_is_deterministic() {
    let (a, digest_a) = archive_of(&busybox_image());
    let (b, digest_b) = archive_of(&busybox_image());
    assert_eq!(digest_a, digest_b);
    assert!(a == b, "two builds of the busybox archive differ");
}

#[test]
fn busybox_layer_has_applets_as_hard_links_and_three_users() {
    let layer = busybox_layer();
    let mut archive = tar::Archive::new(&layer[..]);
    let mut hard_links = 0;
    let mut regular = Vec::new();
    let mut passwd = String::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        match entry.header().entry_type() {
            tar::EntryType::Link => {
                assert_eq!(
                    entry.link_name().unwrap().unwrap().to_str(),
                    Some("bin/busybox"),
                    "{path}"
                );
                hard_links += 1;
            }
            tar::EntryType::Regular => {
                if path == "etc/passwd" {
                    std::io::Read::read_to_string(&mut entry, &mut passwd).unwrap();
                }
                regular.push(path);
            }
            _ => {}
        }
    }
    assert!(hard_links > 200, "only {hard_links} applets");
    assert_eq!(regular, ["bin/busybox", "etc/passwd", "etc/group"]);
    let users: Vec<&str> = passwd
        .lines()
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(users, ["root", "nobody", "user"]);
    assert!(passwd.contains(":1000:1000:"));
}

#[test]
fn pause_image_is_deterministic_and_static() {
    let pause = pause_binary();
    let binary = std::fs::read(&pause).unwrap();
    assert!(
        !has_interpreter(&binary),
        "{} must be statically linked",
        pause.display()
    );
    let (a, digest_a) = archive_of(&pause_image(&pause));
    let (b, digest_b) = archive_of(&pause_image(&pause));
    assert_eq!(digest_a, digest_b);
    assert!(a == b);
}
