//! Reads the tenant out of a request without decoding it: field 1 of the protobuf message
//! in the first gRPC frame. Every authgate request carries its tenant there (a test below
//! checks the descriptor set), so one reader serves every method, and the auth layer can
//! check the tenant before any handler or decoder runs.

/// Why a request's tenant could not be read; the message goes back as INVALID_ARGUMENT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("compressed requests are not accepted")]
    Compressed,
    #[error("truncated gRPC frame")]
    TruncatedFrame,
    #[error("truncated message")]
    TruncatedMessage,
    #[error("malformed varint")]
    MalformedVarint,
    #[error("malformed message")]
    MalformedMessage,
    #[error("tenant is not UTF-8")]
    TenantNotUtf8,
}

/// Reads field 1 (the tenant) of the protobuf message inside one gRPC frame. The last
/// occurrence wins, as in every protobuf decoder, so a repeated field cannot smuggle a
/// different tenant past this check.
pub fn tenant_of_frame(frame: &[u8]) -> Result<String, FrameError> {
    if frame.len() < 5 {
        return Ok(String::new());
    }
    if frame[0] != 0 {
        return Err(FrameError::Compressed);
    }
    let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    let end = len.checked_add(5).ok_or(FrameError::TruncatedFrame)?;
    let msg = frame.get(5..end).ok_or(FrameError::TruncatedFrame)?;
    let mut tenant = String::new();
    let mut i = 0usize;
    let varint = |buf: &[u8], i: &mut usize| -> Result<u64, FrameError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *buf.get(*i).ok_or(FrameError::TruncatedMessage)?;
            *i += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(FrameError::MalformedVarint)
    };
    // Every advance is checked: a length near u64::MAX must not wrap `i` around.
    let skip = |i: usize, n: u64| -> Result<usize, FrameError> {
        usize::try_from(n)
            .ok()
            .and_then(|n| i.checked_add(n))
            .filter(|end| *end <= msg.len())
            .ok_or(FrameError::TruncatedMessage)
    };
    while i < msg.len() {
        let key = varint(msg, &mut i)?;
        let (field, wire) = (key >> 3, key & 7);
        if field == 0 {
            return Err(FrameError::MalformedMessage);
        }
        match wire {
            0 => {
                varint(msg, &mut i)?;
            }
            1 => i = skip(i, 8)?,
            5 => i = skip(i, 4)?,
            2 => {
                let n = varint(msg, &mut i)?;
                let end = skip(i, n)?;
                if field == 1 {
                    tenant = String::from_utf8(msg[i..end].to_vec())
                        .map_err(|_| FrameError::TenantNotUtf8)?;
                }
                i = end;
            }
            _ => return Err(FrameError::MalformedMessage),
        }
    }
    Ok(tenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(msg: &[u8]) -> Vec<u8> {
        let mut f = vec![0];
        f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        f.extend_from_slice(msg);
        f
    }

    #[test]
    fn reads_the_last_tenant_field() {
        use prost::Message;
        let m = crate::proto::v1::GetTokenRequest {
            tenant: "acme".into(),
            credential_id: "idp".into(),
            scopes: vec!["a".into()],
            min_ttl_seconds: 5,
            force_refresh: true,
        };
        assert_eq!(tenant_of_frame(&frame(&m.encode_to_vec())).unwrap(), "acme");
        // Field 1 twice: the decoder keeps the last, so must the check.
        let mut twice = m.encode_to_vec();
        twice.extend_from_slice(&[0x0a, 5, b'o', b't', b'h', b'e', b'r']);
        assert_eq!(tenant_of_frame(&frame(&twice)).unwrap(), "other");
        assert_eq!(
            crate::proto::v1::GetTokenRequest::decode(&twice[..])
                .unwrap()
                .tenant,
            "other"
        );
        assert_eq!(tenant_of_frame(&frame(&[])).unwrap(), "");
        assert!(tenant_of_frame(&[1, 0, 0, 0, 0]).is_err());
        assert!(tenant_of_frame(&frame(&[0x0a, 10, b'x'])).is_err());
    }

    #[test]
    fn lengths_near_u64_max_do_not_wrap() {
        // Field 2, length-delimited, length 2^64 - 1.
        let mut msg = vec![0x12];
        msg.extend_from_slice(&[0xff; 9]);
        msg.push(0x01);
        msg.extend_from_slice(b"xx");
        assert_eq!(
            tenant_of_frame(&frame(&msg)),
            Err(FrameError::TruncatedMessage)
        );
        // A fixed64 cut short is truncated, as prost says too.
        assert_eq!(
            tenant_of_frame(&frame(&[0x09, 1, 2])),
            Err(FrameError::TruncatedMessage)
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use prost::Message;

        proptest! {
            /// Whatever the request, the reader finds the tenant prost decodes.
            #[test]
            fn agrees_with_prost_on_real_requests(
                tenant in ".{0,40}",
                id in "[a-z]{0,10}",
                scopes in proptest::collection::vec(".{0,12}", 0..5),
                ttl in any::<u32>(),
            ) {
                let m = crate::proto::v1::GetTokenRequest {
                    tenant: tenant.clone(),
                    credential_id: id,
                    scopes,
                    min_ttl_seconds: ttl,
                    force_refresh: ttl % 2 == 0,
                };
                prop_assert_eq!(tenant_of_frame(&frame(&m.encode_to_vec())).unwrap(), tenant);
            }

            /// Arbitrary bytes never panic, and when both accept them, both agree.
            #[test]
            fn never_panics_and_never_disagrees(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
                let ours = tenant_of_frame(&frame(&bytes));
                if let (Ok(t), Ok(m)) = (&ours, crate::proto::v1::GetTokenRequest::decode(&bytes[..])) {
                    prop_assert_eq!(t, &m.tenant);
                }
                let _ = tenant_of_frame(&bytes);
            }
        }
    }

    #[test]
    fn every_authgate_request_has_the_tenant_in_field_1() {
        use prost::Message;
        let fds =
            prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        let file = fds
            .file
            .iter()
            .find(|f| f.package() == "authgate.v1")
            .unwrap();
        for svc in &file.service {
            for m in &svc.method {
                let input = m.input_type().rsplit('.').next().unwrap();
                let msg = file
                    .message_type
                    .iter()
                    .find(|t| t.name() == input)
                    .unwrap();
                let f1 = msg.field.iter().find(|f| f.number() == 1).unwrap();
                assert_eq!(
                    f1.name(),
                    "tenant",
                    "{}.{} must carry the tenant in field 1",
                    svc.name(),
                    m.name()
                );
            }
        }
    }
}
