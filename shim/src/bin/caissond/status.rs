//! `caissond status [--json] [--socket PATH]`: asks a running caissond for
//! its CRI Status conditions and its admin `Runtime/Info` (config in use,
//! handlers with their backends' readiness, pods and containers per
//! handler and state) and prints them as tables, or as one JSON object.

use std::path::{Path, PathBuf};

use caisson_proto::admin::{self, runtime_client::RuntimeClient};
use caisson_proto::cri::{self, runtime_service_client::RuntimeServiceClient};
use serde_json::{json, Value};

pub fn command(args: &[String], config_path: Option<&Path>) -> anyhow::Result<()> {
    let mut socket = super::configured_socket(config_path)?;
    let mut as_json = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => as_json = true,
            "--socket" => {
                socket = it
                    .next()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| super::usage())
            }
            _ => super::usage(),
        }
    }
    let (conditions, info) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(ask(&socket))?;
    let report = report(&conditions, &info);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

/// How long `caissond status` waits for the whole answer (Info asks each
/// oci runtime for its version, 5 s at most each).
const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

async fn ask(socket: &Path) -> anyhow::Result<(Vec<cri::RuntimeCondition>, admin::InfoResponse)> {
    tokio::time::timeout(ASK_TIMEOUT, ask_now(socket))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "caissond did not answer on {} within {} s",
                socket.display(),
                ASK_TIMEOUT.as_secs()
            )
        })?
}

async fn ask_now(
    socket: &Path,
) -> anyhow::Result<(Vec<cri::RuntimeCondition>, admin::InfoResponse)> {
    let unreachable = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("caissond is not answering on {}: {e}", socket.display())
    };
    let channel = caisson_shim::client::unix_channel(socket)
        .await
        .map_err(|e| unreachable(&e))?;
    let status = RuntimeServiceClient::new(channel.clone())
        .status(cri::StatusRequest { verbose: false })
        .await
        .map_err(|s| unreachable(&format!("Status: {}: {}", s.code(), s.message())))?
        .into_inner();
    let info = RuntimeClient::new(channel)
        .info(admin::InfoRequest {})
        .await
        .map_err(|s| unreachable(&format!("Info: {}: {}", s.code(), s.message())))?
        .into_inner();
    let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
    Ok((conditions, info))
}

/// The `--json` document; the tables are rendered from it too.
fn report(conditions: &[cri::RuntimeCondition], info: &admin::InfoResponse) -> Value {
    let counts = |counts: &[admin::StateCount]| -> Value {
        counts
            .iter()
            .map(|c| (c.state.clone(), json!(c.count)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    json!({
        "version": info.version,
        "socket": info.socket,
        "config_path": info.config_path,
        "conditions": conditions.iter().map(|c| json!({
            "type": c.r#type,
            "status": c.status,
            "reason": c.reason,
            "message": c.message,
        })).collect::<Vec<_>>(),
        "default_handler": info.default_handler,
        "handlers": info.handlers.iter().map(|h| json!({
            "name": h.name,
            "backend": h.backend,
            "default": h.name == info.default_handler,
            "ready": h.ready,
            "reason": h.reason,
            "checks": h.checks.iter().map(|c| json!({
                "name": c.name,
                "ok": c.ok,
                "detail": c.detail,
            })).collect::<Vec<_>>(),
            "pods": counts(&h.pods),
            "containers": counts(&h.containers),
        })).collect::<Vec<_>>(),
    })
}

/// The human form of [`report`]'s document.
fn render(report: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let yes_no = |v: &Value| {
        if v.as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
        .to_string()
    };
    let counts = |v: &Value| {
        let parts: Vec<String> = v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(state, n)| format!("{n} {state}"))
            .collect();
        if parts.is_empty() {
            "-".to_string()
        } else {
            parts.join(", ")
        }
    };
    let config = match s(&report["config_path"]) {
        p if p.is_empty() => "(embedded default)".to_string(),
        p => p,
    };
    let mut out = format!(
        "caissond {}\nsocket: {}\nconfig: {config}\n\n",
        s(&report["version"]),
        s(&report["socket"])
    );
    let mut rows = vec![row(["CONDITION", "STATUS", "REASON", "MESSAGE"])];
    for c in list(&report["conditions"]) {
        rows.push(vec![
            s(&c["type"]),
            c["status"].to_string(),
            s(&c["reason"]),
            s(&c["message"]),
        ]);
    }
    out += &table(&rows);
    out.push('\n');
    let mut rows = vec![row(["HANDLER", "BACKEND", "READY", "PODS", "CONTAINERS"])];
    let mut checks = vec![row(["HANDLER", "CHECK", "OK", "DETAIL"])];
    for h in list(&report["handlers"]) {
        let mut name = s(&h["name"]);
        if h["default"].as_bool() == Some(true) {
            name += " (default)";
        }
        rows.push(vec![
            name,
            s(&h["backend"]),
            yes_no(&h["ready"]),
            counts(&h["pods"]),
            counts(&h["containers"]),
        ]);
        for c in list(&h["checks"]) {
            checks.push(vec![
                s(&h["name"]),
                s(&c["name"]),
                yes_no(&c["ok"]),
                s(&c["detail"]),
            ]);
        }
    }
    out += &table(&rows);
    out.push('\n');
    out += &table(&checks);
    out
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Columns padded to their widest cell, two spaces apart; no trailing blanks.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_and_tables() {
        let info = admin::InfoResponse {
            version: "0.1.0".into(),
            config_path: "/etc/caisson/caisson.toml".into(),
            socket: "/run/caisson/caissond.sock".into(),
            default_handler: "runc".into(),
            handlers: vec![
                admin::HandlerInfo {
                    name: "runc".into(),
                    backend: "native".into(),
                    ready: true,
                    reason: String::new(),
                    checks: vec![admin::ReadinessCheck {
                        name: "shim binary".into(),
                        ok: true,
                        detail: "/usr/bin/shim".into(),
                    }],
                    pods: vec![admin::StateCount {
                        state: "ready".into(),
                        count: 2,
                    }],
                    containers: vec![
                        admin::StateCount {
                            state: "exited".into(),
                            count: 1,
                        },
                        admin::StateCount {
                            state: "running".into(),
                            count: 3,
                        },
                    ],
                },
                admin::HandlerInfo {
                    name: "gvisor".into(),
                    backend: "oci".into(),
                    ready: false,
                    reason: "oci runtime: /usr/bin/runsc: No such file".into(),
                    checks: vec![],
                    pods: vec![],
                    containers: vec![],
                },
            ],
        };
        let conditions = [cri::RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        }];
        let doc = report(&conditions, &info);
        assert_eq!(doc["handlers"][0]["default"], true);
        assert_eq!(doc["handlers"][0]["containers"]["running"], 3);
        assert_eq!(doc["handlers"][1]["ready"], false);
        assert_eq!(doc["conditions"][0]["status"], true);
        let text = render(&doc);
        for want in [
            "config: /etc/caisson/caisson.toml",
            "RuntimeReady  true",
            "runc (default)  native   yes    2 ready  1 exited, 3 running",
            "gvisor          oci      no     -        -",
            "runc     shim binary  yes  /usr/bin/shim",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
        assert!(text.lines().all(|l| l == l.trim_end()), "{text}");
    }
}
