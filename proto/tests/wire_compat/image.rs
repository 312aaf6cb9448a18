//! ImageService messages.

use k8s_cri::v1::{
    AuthConfig, Image, ImageFilter, ImageStatusRequest, ImageStatusResponse, ListImagesRequest,
    ListImagesResponse, PullImageRequest, PullImageResponse,
};

use super::container::image_spec;
use super::pod::pod_sandbox_config;
use super::values::Distinct;

pub fn pull_image_request(v: &mut Distinct) -> PullImageRequest {
    PullImageRequest {
        image: image_spec(v),
        auth: Some(AuthConfig {
            username: v.text("username"),
            password: v.text("password"),
            auth: v.text("dXNlcjpwYXNz"),
            server_address: v.text("registry.example:5000"),
            identity_token: v.text("identity-token"),
            registry_token: v.text("registry-token"),
        }),
        sandbox_config: Some(pod_sandbox_config(v)),
    }
}

pub fn pull_image_response(v: &mut Distinct) -> PullImageResponse {
    PullImageResponse {
        image_ref: v.text("sha256:pulled"),
    }
}

fn image(v: &mut Distinct) -> Image {
    Image {
        id: v.text("sha256:image-id"),
        repo_tags: v.texts("registry.example/app:tag", 2),
        repo_digests: v.texts("registry.example/app@sha256:digest", 2),
        size: v.num(),
        uid: v.i64_value(),
        username: v.text("image-user"),
        spec: image_spec(v),
        pinned: true,
    }
}

pub fn image_status_request(v: &mut Distinct) -> ImageStatusRequest {
    ImageStatusRequest {
        image: image_spec(v),
        verbose: true,
    }
}

pub fn image_status_response(v: &mut Distinct) -> ImageStatusResponse {
    ImageStatusResponse {
        image: Some(image(v)),
        info: v.map("info"),
    }
}

pub fn list_images_request(v: &mut Distinct) -> ListImagesRequest {
    ListImagesRequest {
        filter: Some(ImageFilter {
            image: image_spec(v),
        }),
    }
}

pub fn list_images_response(v: &mut Distinct) -> ListImagesResponse {
    ListImagesResponse {
        images: vec![image(v), image(v)],
    }
}
