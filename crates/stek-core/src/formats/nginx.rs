//! nginx: a directory of slot files `0.key` .. `<slots-1>.key`, one key per file, one
//! `ssl_session_ticket_key` directive per slot. nginx encrypts with the FIRST directive, so
//! `0.key` always holds the active key; then the staged key, then retiring keys newest first.
//! The slot count is fixed by config so nginx's configuration never changes; slots the ring does
//! not fill repeat its oldest key (duplicates only decrypt, and add no new key material).
//!
//! Layouts (ngx_event_openssl.c): 80 bytes = name, HMAC-SHA256 key, AES-256 key;
//! 48 bytes = name, AES-128 key, HMAC key.

use super::{
    put_name_aes_hmac, put_name_hmac_aes, Delivery, Format, FormatConfigError, FormatError,
    FormatInfo, FormatOptions, KeySize, Layout, Rendered, SecretBytes,
};
use crate::ring::KeyRing;

/// Registry entry.
pub static INFO: FormatInfo = FormatInfo {
    name: "nginx",
    summary: "directory of slot files 0.key..N.key for ssl_session_ticket_key; 0.key encrypts",
    layout: Layout::Directory,
    delivery: Delivery::Reload,
    key_sizes: &[KeySize::Bytes80, KeySize::Bytes48],
    default_key_size: KeySize::Bytes80,
    takes_slots: true,
    build,
};

fn build(key_size: KeySize, o: &FormatOptions) -> Result<Box<dyn Format>, FormatConfigError> {
    let needed = 2 + o.retain;
    let slots = match o.slots {
        None => needed,
        Some(n) if n < needed as u64 => {
            return Err(FormatConfigError::TooFewSlots {
                found: n,
                needed,
                retain: o.retain,
            })
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(1024),
    };
    Ok(Box::new(Nginx { key_size, slots }))
}

/// The nginx format with its fixed slot count.
#[derive(Debug, Clone, Copy)]
pub struct Nginx {
    key_size: KeySize,
    slots: usize,
}

impl Nginx {
    /// The slot file names, in directive order.
    pub fn slot_names(&self) -> Vec<String> {
        (0..self.slots).map(|i| format!("{i}.key")).collect()
    }
}

impl Format for Nginx {
    fn info(&self) -> &'static FormatInfo {
        &INFO
    }

    fn render(&self, ring: &KeyRing) -> Result<Rendered, FormatError> {
        let keys = ring.by_role();
        if keys.len() > self.slots {
            return Err(FormatError::RingTooLarge {
                format: INFO.name,
                keys: keys.len(),
                room: self.slots,
            });
        }
        let filler = *keys.last().expect("by_role always holds the active key");
        let files = self
            .slot_names()
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let key = &keys.get(i).copied().unwrap_or(filler).key;
                let mut bytes = SecretBytes::with_capacity(self.key_size.bytes());
                match self.key_size {
                    KeySize::Bytes80 => put_name_hmac_aes(&mut bytes, key, self.key_size),
                    KeySize::Bytes48 => put_name_aes_hmac(&mut bytes, key, self.key_size),
                }
                (name, bytes)
            })
            .collect();
        Ok(Rendered::Directory(files))
    }

    fn owns_file(&self, name: &str) -> bool {
        name.strip_suffix(".key")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }

    fn snippet(&self, path: &str) -> String {
        let dir = path.trim_end_matches('/');
        let mut s = String::from(
            "# nginx (http or stream server block): 0.key encrypts, the others only decrypt.\n\
             ssl_protocols TLSv1.2 TLSv1.3;\n\
             ssl_session_tickets on;\n",
        );
        for name in self.slot_names() {
            s.push_str(&format!("ssl_session_ticket_key {dir}/{name};\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{aes_hmac_48, hmac_aes_80, opts, ring};
    use super::super::{build, Rendered};

    fn files(r: Rendered) -> Vec<(String, Vec<u8>)> {
        let Rendered::Directory(files) = r else {
            panic!("nginx renders a directory")
        };
        files
            .into_iter()
            .map(|(n, b)| (n, b.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn golden_80_byte_slots_active_first_then_staged_then_retiring_newest_first() {
        // Ring: retiring 1, 2; active 3; staged 4. retain 2 -> 4 slots.
        let f = build("nginx", &opts(2)).unwrap();
        let got = files(f.render(&ring(2)).unwrap());
        let want = vec![
            ("0.key".to_string(), hmac_aes_80(3)),
            ("1.key".to_string(), hmac_aes_80(4)),
            ("2.key".to_string(), hmac_aes_80(2)),
            ("3.key".to_string(), hmac_aes_80(1)),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn golden_48_byte_slots_use_name_aes_hmac() {
        let mut o = opts(1);
        o.key_size = Some(48);
        let got = files(build("nginx", &o).unwrap().render(&ring(1)).unwrap());
        assert_eq!(got[0], ("0.key".to_string(), aes_hmac_48(2)));
        assert_eq!(got[1], ("1.key".to_string(), aes_hmac_48(3)));
        assert_eq!(got[2], ("2.key".to_string(), aes_hmac_48(1)));
        assert!(got.iter().all(|(_, b)| b.len() == 48));
    }

    #[test]
    fn spare_slots_repeat_the_oldest_key_and_never_the_active_one_first() {
        // Bootstrap-like ring (active 1, staged 2) in 4 slots.
        let mut o = opts(2);
        o.slots = Some(4);
        let got = files(build("nginx", &o).unwrap().render(&ring(0)).unwrap());
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].1, hmac_aes_80(1));
        assert_eq!(got[1].1, hmac_aes_80(2));
        assert_eq!(got[2].1, hmac_aes_80(2));
        assert_eq!(got[3].1, hmac_aes_80(2));
    }

    #[test]
    fn too_few_slots_is_a_config_error_that_says_how_many() {
        let mut o = opts(2);
        o.slots = Some(3);
        let msg = build("nginx", &o).unwrap_err().to_string();
        assert!(msg.contains("slots = 3 is too few"), "{msg}");
        assert!(msg.contains("set slots to 4"), "{msg}");
        o.slots = Some(0);
        assert!(build("nginx", &o).is_err());
    }

    #[test]
    fn a_ring_larger_than_the_slots_is_refused_not_truncated() {
        let f = build("nginx", &opts(1)).unwrap();
        let msg = f.render(&ring(3)).unwrap_err().to_string();
        assert!(msg.contains("holds 5 keys"), "{msg}");
    }

    #[test]
    fn owns_only_slot_files() {
        let f = build("nginx", &opts(1)).unwrap();
        assert!(f.owns_file("0.key"));
        assert!(f.owns_file("17.key"));
        assert!(!f.owns_file(".key"));
        assert!(!f.owns_file("a.key"));
        assert!(!f.owns_file("0.key.bak"));
        assert!(!f.owns_file(".0.key.stek-tmp-1"));
    }

    #[test]
    fn snippet_lists_every_slot_in_order() {
        let f = build("nginx", &opts(1)).unwrap();
        let s = f.snippet("/run/stek/nginx/");
        let lines: Vec<_> = s
            .lines()
            .filter(|l| l.starts_with("ssl_session_ticket_key"))
            .collect();
        assert_eq!(
            lines,
            vec![
                "ssl_session_ticket_key /run/stek/nginx/0.key;",
                "ssl_session_ticket_key /run/stek/nginx/1.key;",
                "ssl_session_ticket_key /run/stek/nginx/2.key;",
            ]
        );
    }
}
