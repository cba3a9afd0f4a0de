//! Server reflection, `grpc.reflection.v1` and `grpc.reflection.v1alpha` (tonic-reflection):
//! the descriptors of the gpukill contract as `proto/` compiles them (comments included),
//! of the standard health service and of reflection itself, so that `grpcurl list`,
//! `grpcurl describe` and clients that build requests from reflected descriptors work
//! without the `.proto` files.

use tonic_reflection::server::{Builder, Error, v1, v1alpha};

/// The v1 and v1alpha reflection services, refusing requests over `request_limit` bytes.
pub fn servers(
    request_limit: usize,
) -> Result<
    (
        v1::ServerReflectionServer<impl v1::ServerReflection>,
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
    ),
    Error,
> {
    let v1 = builder().build_v1()?;
    let v1alpha = builder().build_v1alpha()?;
    Ok((
        v1.max_decoding_message_size(request_limit),
        v1alpha.max_decoding_message_size(request_limit),
    ))
}

/// What both versions reflect.
fn builder() -> Builder<'static> {
    Builder::configure()
        .register_encoded_file_descriptor_set(gpukill_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

#[cfg(test)]
mod tests {
    use gpukill_proto::v1::cluster_service_server::ClusterServiceServer;
    use gpukill_proto::v1::gpu_kill_service_server::GpuKillServiceServer;
    use tokio_stream::StreamExt;
    use tonic::server::NamedService;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    /// One request on a reflection stream served in process, its one answer.
    async fn ask(request: MessageRequest) -> MessageResponse {
        let (v1, _) = super::servers(4 << 20).unwrap();
        let (client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(v1)
                .serve_with_incoming(tokio_stream::once(Ok::<_, std::io::Error>(server))),
        );
        let mut client = Some(client);
        let channel = tonic::transport::Endpoint::try_from("http://in-process")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let client = client.take();
                async move {
                    client
                        .map(hyper_util::rt::TokioIo::new)
                        .ok_or_else(|| std::io::Error::other("one connection only"))
                }
            }))
            .await
            .unwrap();
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        let mut answers = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::once(request))
            .await
            .unwrap()
            .into_inner();
        let answer: ServerReflectionResponse = answers.next().await.unwrap().unwrap();
        answer.message_response.unwrap()
    }

    #[tokio::test]
    async fn reflection_lists_the_contract_health_and_itself() {
        let MessageResponse::ListServicesResponse(list) =
            ask(MessageRequest::ListServices(String::new())).await
        else {
            panic!("not a service list");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for name in [
            <GpuKillServiceServer<()> as NamedService>::NAME,
            <ClusterServiceServer<()> as NamedService>::NAME,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
    }

    #[tokio::test]
    async fn a_symbol_resolves_to_the_file_with_its_comments() {
        let symbol = format!("{}.List", <GpuKillServiceServer<()> as NamedService>::NAME);
        let MessageResponse::FileDescriptorResponse(files) =
            ask(MessageRequest::FileContainingSymbol(symbol)).await
        else {
            panic!("not a file descriptor");
        };
        let file: prost_types::FileDescriptorProto =
            prost::Message::decode(files.file_descriptor_proto[0].as_slice()).unwrap();
        assert!(file.name().ends_with(".proto"), "{}", file.name());
        let comments = file.source_code_info.unwrap_or_default().location;
        assert!(
            comments.iter().any(|l| l.leading_comments.is_some()),
            "the reflected file keeps the contract's comments"
        );
    }
}
