//! A gRPC channel to caissond's unix socket (for `caissond images import`
//! and tests).

use std::path::Path;

/// Connects to a unix socket as a tonic channel.
pub async fn unix_channel(socket: &Path) -> anyhow::Result<tonic::transport::Channel> {
    let socket = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await?;
    Ok(channel)
}
