//! SPDY/3.1 (the framing kubelet's streaming server and crictl 1.26 use)
//! with Kubernetes' remotecommand and portforward subprotocols.
