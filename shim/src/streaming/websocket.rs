//! WebSocket with Kubernetes' channel protocols (`v5`/`v4.channel.k8s.io`,
//! `base64.channel.k8s.io`) and the port-forward channel framing.
