//! Envoy: a file-based SDS resource holding a `Secret` with `session_ticket_keys`, one inline
//! 80-byte key each (name, HMAC-SHA256 key, AES-256 key); the FIRST key encrypts. Envoy watches
//! the file (`path_config_source` with `watched_directory`) and picks up a renamed-over file
//! without a restart. Order: active, staged, retiring newest first.

use super::{
    base64_key, put_name_hmac_aes, Delivery, Format, FormatConfigError, FormatError, FormatInfo,
    FormatOptions, KeySize, Layout, Rendered, SecretBytes,
};
use crate::ring::KeyRing;

/// The SDS secret name Envoy's listener refers to.
pub const SECRET_NAME: &str = "stek_session_ticket_keys";

/// Registry entry.
pub static INFO: FormatInfo = FormatInfo {
    name: "envoy",
    summary: "file-based SDS Secret with session_ticket_keys (JSON), first encrypts",
    layout: Layout::File,
    delivery: Delivery::Reload,
    key_sizes: &[KeySize::Bytes80],
    default_key_size: KeySize::Bytes80,
    takes_slots: false,
    build,
};

fn build(_: KeySize, _: &FormatOptions) -> Result<Box<dyn Format>, FormatConfigError> {
    Ok(Box::new(Envoy))
}

/// The Envoy format.
#[derive(Debug, Clone, Copy)]
pub struct Envoy;

impl Format for Envoy {
    fn info(&self) -> &'static FormatInfo {
        &INFO
    }

    fn render(&self, ring: &KeyRing) -> Result<Rendered, FormatError> {
        // Built by hand into one zeroizing buffer: base64 needs no JSON escaping, and going
        // through serde_json would leave unzeroized copies of the key text behind.
        let keys = ring.by_role();
        let mut out = SecretBytes::with_capacity(300 + keys.len() * 140);
        out.extend(b"{\"resources\":[{\"@type\":\"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\",\"name\":\"");
        out.extend(SECRET_NAME.as_bytes());
        out.extend(b"\",\"session_ticket_keys\":{\"keys\":[");
        for (i, k) in keys.iter().enumerate() {
            if i > 0 {
                out.extend(b",");
            }
            let mut raw = SecretBytes::with_capacity(80);
            put_name_hmac_aes(&mut raw, &k.key, KeySize::Bytes80);
            out.extend(b"{\"inline_bytes\":\"");
            out.extend(base64_key(&raw).expose().as_bytes());
            out.extend(b"\"}");
        }
        out.extend(b"]}}]}\n");
        Ok(Rendered::File(out))
    }

    fn snippet(&self, path: &str) -> String {
        let dir = std::path::Path::new(path)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| ".".into());
        format!(
            "# Envoy DownstreamTlsContext: keys come from a file-based SDS secret\n\
             session_ticket_keys_sds_secret_config:\n\
             \x20 name: {SECRET_NAME}\n\
             \x20 sds_config:\n\
             \x20   path_config_source:\n\
             \x20     path: {path}\n\
             \x20     watched_directory:\n\
             \x20       path: {dir}\n"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{hmac_aes_80, opts, ring};
    use super::super::{build, Rendered};
    use base64::Engine as _;

    #[test]
    fn golden_sds_document_active_first() {
        let f = build("envoy", &opts(1)).unwrap();
        let Rendered::File(b) = f.render(&ring(1)).unwrap() else {
            panic!("envoy renders a file")
        };
        let doc: serde_json::Value = serde_json::from_slice(b.as_bytes()).unwrap();
        let secret = &doc["resources"][0];
        assert_eq!(
            secret["@type"],
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
        );
        assert_eq!(secret["name"], "stek_session_ticket_keys");
        let keys: Vec<Vec<u8>> = secret["session_ticket_keys"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                base64::engine::general_purpose::STANDARD
                    .decode(k["inline_bytes"].as_str().unwrap())
                    .unwrap()
            })
            .collect();
        assert_eq!(keys, vec![hmac_aes_80(2), hmac_aes_80(3), hmac_aes_80(1)]);
    }
}
