//! Bounds on what a CRI request may carry, beyond the gRPC message limit.
//!
//! A pod's or container's labels and annotations are kept in its record,
//! written at every state change and returned by every List and Status
//! call, for the object's whole life; Kubernetes itself never sends more
//! than 256 KiB of a pod's annotations (the API server's limit) plus a few
//! labels and kubelet's own keys. A client that sends megabytes of them is
//! refused before anything is made, naming the largest entry.

use std::collections::HashMap;

use super::SpecError;

/// The gRPC message limit of the CRI socket, both ways: what kubelet and
/// containerd use (16 MiB).
pub const MAX_MESSAGE: usize = 16 << 20;

/// Labels and annotations of one pod or container together, keys and
/// values, in bytes: twice Kubernetes' 256 KiB limit on a pod's annotations.
pub const MAX_METADATA: usize = 512 << 10;

/// Refuses `labels` and `annotations` (fields `<prefix>.labels` and
/// `<prefix>.annotations`) larger than [`MAX_METADATA`] together.
pub fn check_metadata(
    labels: &HashMap<String, String>,
    annotations: &HashMap<String, String>,
    prefix: &str,
) -> Result<(), SpecError> {
    let entries = || {
        labels
            .iter()
            .map(|(k, v)| ("labels", k, k.len() + v.len()))
            .chain(
                annotations
                    .iter()
                    .map(|(k, v)| ("annotations", k, k.len() + v.len())),
            )
    };
    let total: usize = entries().map(|(_, _, size)| size).sum();
    if total <= MAX_METADATA {
        return Ok(());
    }
    let (field, key, size) = entries()
        .max_by_key(|(_, _, size)| *size)
        .expect("a total over the limit has entries");
    let shown: String = key.chars().take(64).collect();
    Err(SpecError::invalid(
        format!("{prefix}.{field}[{shown:?}]"),
        format!(
            "labels and annotations total {total} bytes, more than the {} KiB allowed \
             (Kubernetes allows 256 KiB of annotations per pod); this entry is {size} bytes \
             of them ({} entries in all)",
            MAX_METADATA >> 10,
            labels.len() + annotations.len()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, usize)]) -> HashMap<String, String> {
        entries
            .iter()
            .map(|(k, n)| (k.to_string(), "v".repeat(*n)))
            .collect()
    }

    #[test]
    fn metadata_up_to_the_limit_passes_and_past_it_names_the_largest_entry() {
        let ten_thousand: HashMap<String, String> = (0..10_000)
            .map(|i| (format!("example.com/label-{i}"), format!("value-{i}")))
            .collect();
        check_metadata(&ten_thousand, &HashMap::new(), "config").unwrap();
        check_metadata(&HashMap::new(), &ten_thousand, "config").unwrap();
        // Both: about 620 KiB.
        let err = check_metadata(&ten_thousand, &ten_thousand, "config").unwrap_err();
        assert!(err.to_string().contains("20000 entries"), "{err}");
        check_metadata(&map(&[("a", MAX_METADATA - 1)]), &HashMap::new(), "config").unwrap();

        let err =
            check_metadata(&map(&[("a", MAX_METADATA)]), &HashMap::new(), "config").unwrap_err();
        assert_eq!(err.field(), Some("config.labels[\"a\"]"), "{err}");
        let err = check_metadata(
            &map(&[("small", 10)]),
            &map(&[("blob", 1 << 20), ("other", 5)]),
            "config",
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("config.annotations[\"blob\"]"), "{err}");
        assert!(err.to_string().contains("512 KiB"), "{err}");
    }
}
