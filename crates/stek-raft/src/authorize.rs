//! Who may make which request of a peer, pure: [`authorize`] decides from the caller (how it
//! connected, and the role its certificate names), the request, and the few facts of the
//! group's state the request needs ([`Facts`], gathered by the listener as [`needs`] says).
//!
//! - Replication, votes and snapshots come only from the peer the certificate names, acting
//!   for itself, and only from a voter.
//! - A member registers, acknowledges and campaigns only as itself; writes rings, copies,
//!   resigns and forgets members only while it leads (otherwise the reply is the store's
//!   fence); renews or ends only a lease no other member holds; removes only itself, and never
//!   below the voter floor ([`may_remove`](crate::group::may_remove)).
//! - An operator reads, requests rotations and adds or removes peers (below the voter floor
//!   too, with the explicit flag, which the leader checks); nothing else.
//! - The local socket (this node's own user), plain TCP (`insecure = true`) and TLS without
//!   `[identity]` trust (tests) may do anything; a certificate that makes its holder nobody
//!   (revoked, no stek role, none) nothing.

use super::group::raft_id;
use super::store::Command;
use super::wire::Request;
use stek_trust::identity::Role;

/// Who is at the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// The Unix socket: a process of this node's own user.
    Local,
    /// Plain TCP (`insecure = true`): anyone.
    Insecure,
    /// TLS without `[identity]` trust (tests): any certificate of the CA.
    AnyCertificate,
    /// A verified certificate.
    Cert(Role),
    /// A certificate of the CA that does not make its holder anyone (revoked, no stek role).
    Refused(String),
}

/// Why a request is not carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not allowed for this caller: an error reply, logged.
    Denied(String),
    /// A ring write or resignation by a member that does not lead: answered as the store's
    /// term fence answers it (a deposed leader's normal fate).
    Fenced(String),
}

/// Which fact of the group's state a request's authorization needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// None.
    Nothing,
    /// Whether the Raft sender is a voter.
    Voter(u64),
    /// Which member leads.
    Leader,
    /// Who holds this lease.
    LeaseHolder(i64),
}

/// The facts of the group's state [`authorize`] was given: each is the listener's answer to
/// what [`needs`] asked, and one it did not look up counts against the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    /// The Raft sender is a voter of the group (false: not, or not looked up).
    pub sender_is_voter: bool,
    /// The member that leads (holds the store's leadership), if any (None: nobody, or not
    /// looked up: either way the caller does not lead).
    pub leader: Option<String>,
    /// Who holds the lease named.
    pub lease_holder: LeaseHolder,
}

/// Who holds the lease a renewal or revocation names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum LeaseHolder {
    /// The listener did not look it up: refused.
    #[default]
    NotLookedUp,
    /// No member holds it (a lease granted, not registered yet).
    Nobody,
    /// This member does.
    Member(String),
}

/// The Raft peer a replication, vote or snapshot request speaks for, if it is one.
fn raft_sender(req: &Request) -> Option<Option<u64>> {
    match req {
        Request::Append(r) => Some(r.vote.leader_id().voted_for()),
        Request::Vote(r) => Some(r.vote.leader_id().voted_for()),
        Request::InstallSnapshot(r) => Some(r.vote.leader_id().voted_for()),
        _ => None,
    }
}

/// What the listener must look up before [`authorize`] decides on `req` from `caller`: only a
/// member's certificate needs the group's state.
pub(crate) fn needs(caller: &Caller, req: &Request) -> Need {
    let Caller::Cert(Role::Member(id)) = caller else {
        return Need::Nothing;
    };
    if raft_sender(req).is_some() {
        return Need::Voter(raft_id(id));
    }
    match req {
        Request::Write(
            Command::WriteRing { .. }
            | Command::WriteCopies { .. }
            | Command::Resign { .. }
            | Command::ForgetMember { .. },
        ) => Need::Leader,
        Request::Write(Command::Revoke { lease }) | Request::Heartbeat { lease } => {
            Need::LeaseHolder(*lease)
        }
        _ => Need::Nothing,
    }
}

/// Whether `caller` may make `req`, given `facts` (see the module's rules).
pub(crate) fn authorize(caller: &Caller, req: &Request, facts: &Facts) -> Result<(), Refusal> {
    use Refusal::Denied;
    let role = match caller {
        Caller::Local | Caller::Insecure | Caller::AnyCertificate => return Ok(()),
        Caller::Refused(why) => return Err(Denied(why.clone())),
        Caller::Cert(role) => role,
    };
    let raft_leader = raft_sender(req);
    match (role, req) {
        (Role::Operator(_), Request::State | Request::Wait { .. }) => Ok(()),
        (Role::Operator(_), Request::Write(Command::PutRequest { .. })) => Ok(()),
        (Role::Operator(_), Request::Members | Request::Leave { .. } | Request::Join { .. }) => {
            Ok(())
        }
        (Role::Operator(name), _) => Err(Denied(format!(
            "operator {name} may only read, request rotations and add or remove peers"
        ))),
        (Role::Member(id), Request::Join { name, .. }) => Err(Denied(format!(
            "member {id} may not add peer {name}: adding a peer takes an operator certificate (stek peers add)"
        ))),
        (Role::Member(id), Request::Leave { name, .. }) if name != id => Err(Denied(format!(
            "member {id} may not remove peer {name}"
        ))),
        // A floor that a member's certificate could waive would be no floor: going below it
        // takes an operator's.
        (
            Role::Member(id),
            Request::Leave {
                below_voter_floor: true,
                ..
            },
        ) => Err(Denied(format!(
            "member {id} may not remove a voter below the voter floor: that takes an operator certificate (stek peers remove --below-voter-floor)"
        ))),
        (Role::Member(_), Request::Members | Request::Probe { .. }) => Ok(()),
        (Role::Member(id), _) if raft_leader.is_some() => {
            if raft_leader != Some(Some(raft_id(id))) {
                Err(Denied(format!(
                    "member {id} sent a Raft message for peer {:?}, not for itself",
                    raft_leader.flatten()
                )))
            } else if !facts.sender_is_voter {
                // Only a voter leads, replicates, sends snapshots and asks for votes.
                Err(Denied(format!("member {id} is not a voter of the group")))
            } else {
                Ok(())
            }
        }
        (
            Role::Member(id),
            Request::Write(
                Command::Register { node_id, .. }
                | Command::PutMember { node_id, .. }
                | Command::Campaign { node_id, .. },
            ),
        ) if node_id != id => Err(Denied(format!(
            "member {id} may not act for member {node_id}"
        ))),
        (
            Role::Member(id),
            Request::Write(
                Command::WriteRing { .. }
                | Command::WriteCopies { .. }
                | Command::Resign { .. }
                | Command::ForgetMember { .. },
            ),
        ) => {
            // Only the leader writes rings and resigns; the store fences the term too.
            match &facts.leader {
                Some(l) if l == id => Ok(()),
                _ => Err(Refusal::Fenced(format!(
                    "member {id} does not lead; only the leader writes the ring or resigns"
                ))),
            }
        }
        (
            Role::Member(id),
            Request::Write(Command::Revoke { .. }) | Request::Heartbeat { .. },
        ) => {
            // A member renews or ends only a lease no other member holds.
            match &facts.lease_holder {
                LeaseHolder::Member(other) if other != id => Err(Denied(format!(
                    "member {id} may not renew or end member {other}'s lease"
                ))),
                LeaseHolder::Member(_) | LeaseHolder::Nobody => Ok(()),
                LeaseHolder::NotLookedUp => Err(Denied(format!(
                    "member {id}'s lease request was not checked against the lease's holder"
                ))),
            }
        }
        (Role::Member(_), _) => Ok(()),
    }
}

/// `req` as the group applies it once authorized: a rotation request carries its sender as
/// the caller's certificate names it (`member n1`, `operator alice`), whatever the request
/// said, so that the keyspace bounds what one sender keeps pending. A caller every peer trusts
/// (the local socket, `insecure`, tests) is taken at its word.
pub(crate) fn stamped(caller: &Caller, req: Request) -> Request {
    match (caller, req) {
        (Caller::Cert(role), Request::Write(Command::PutRequest { key, value, .. })) => {
            Request::Write(Command::PutRequest {
                key,
                value,
                by: Some(role.to_string()),
            })
        }
        (_, req) => req,
    }
}

/// Whose share of a peer's connections a connection counts against
/// ([`stek_trust::slots::Shares`]): past its share a holder's own oldest connection makes room,
/// and a holder that holds fewer than the largest is always served. So no one certificate
/// holder, and no one address, can keep the peers' Raft messages and the members' calls out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Holder {
    /// One member or operator, however many certificates of that role it holds.
    Role(Role),
    /// Every certificate of the CA that makes its holder nobody (revoked, no stek role): one
    /// share for them all. The handshake refuses such certificates already
    /// ([`PeerTls::trusted`](crate::tls::PeerTls::trusted)); one that expires between the
    /// handshake and the request lands here, and is told why it is refused.
    Nobody,
    /// A caller that may do anything and names no one to tell it apart by (this node's own
    /// user on the Unix socket; plain TCP and TLS without `[identity]` trust, where anyone
    /// who connects may do anything anyway): each connection, numbered, is a share of its own,
    /// so such peers only meet the listener's total.
    Unnamed(u64),
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Role(role) => write!(f, "{role}"),
            Holder::Nobody => write!(
                f,
                "certificates that make their holder nobody (revoked, no stek role)"
            ),
            Holder::Unnamed(n) => write!(f, "unnamed connection {n}"),
        }
    }
}

/// Whose share `caller`'s connection, the listener's `n`th, counts against.
pub(crate) fn holder(caller: &Caller, n: u64) -> Holder {
    match caller {
        Caller::Cert(role) => Holder::Role(role.clone()),
        Caller::Refused(_) => Holder::Nobody,
        Caller::Local | Caller::Insecure | Caller::AnyCertificate => Holder::Unnamed(n),
    }
}

/// The largest request frame a peer reads from an operator, or from a certificate that makes
/// its holder nobody: an operator's requests (a read, a rotation request, adding or removing a
/// peer) are a few kilobytes, and a refused caller's is not carried out.
pub(crate) const SMALL_REQUEST: u32 = 64 * 1024;

/// The largest request frame a peer reads from a member that is not a voter: its own
/// records, and, while it leads, ring writes (a ring sealed for a few thousand members).
pub(crate) const MEMBER_REQUEST: u32 = 4 << 20;

/// The largest request frame a peer reads from `caller` (`voter`: a member that is a voter of
/// the group now): a voter's (replication and snapshots) up to
/// [`MAX_FRAME`](crate::wire::MAX_FRAME), another member's up to [`MEMBER_REQUEST`], an
/// operator's or a refused caller's up to [`SMALL_REQUEST`]. So one certificate's 32
/// connections hold 128 MiB at most unless it is a voter's.
pub(crate) fn largest_request(caller: &Caller, voter: bool) -> u32 {
    match caller {
        Caller::Cert(Role::Operator(_)) | Caller::Refused(_) => SMALL_REQUEST,
        Caller::Cert(Role::Member(_)) if !voter => MEMBER_REQUEST,
        Caller::Cert(Role::Member(_))
        | Caller::Local
        | Caller::Insecure
        | Caller::AnyCertificate => crate::wire::MAX_FRAME,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rotation request is counted against the certificate that sent it, never against the
    /// name it claims; other requests pass unchanged.
    #[test]
    fn a_request_carries_the_sender_its_certificate_names() {
        let put = |by: Option<&str>| {
            Request::Write(Command::PutRequest {
                key: "/p/requests/1".into(),
                value: b"r".to_vec(),
                by: by.map(str::to_owned),
            })
        };
        let by = |r: Request| match r {
            Request::Write(Command::PutRequest { by, .. }) => by,
            other => panic!("{other:?}"),
        };
        let member = Caller::Cert(Role::Member("n1".into()));
        let operator = Caller::Cert(Role::Operator("alice".into()));
        let rows = [
            ("a member", &member, None, Some("member n1")),
            (
                "a member claiming to be root",
                &member,
                Some("operator root"),
                Some("member n1"),
            ),
            ("an operator", &operator, None, Some("operator alice")),
            (
                "the local socket, at its word",
                &Caller::Local,
                Some("x"),
                Some("x"),
            ),
            ("insecure", &Caller::Insecure, None, None),
        ];
        for (who, caller, claimed, expected) in rows {
            assert_eq!(
                by(stamped(caller, put(claimed))).as_deref(),
                expected,
                "{who}"
            );
        }
        assert!(matches!(stamped(&member, Request::State), Request::State));
    }
    use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
    use openraft::{CommittedLeaderId, LogId, SnapshotMeta, StoredMembership, Vote};

    const ME: &str = "n1";
    const OTHER: &str = "n2";

    fn vote(of: &str) -> Vote<u64> {
        Vote::new(3, raft_id(of))
    }

    /// One request of every kind, `sender` speaking for Raft and `me` for the rest.
    fn every_request(me: &str, sender: &str) -> Vec<(&'static str, Request)> {
        let w = |c| Request::Write(c);
        vec![
            (
                "append",
                Request::Append(AppendEntriesRequest {
                    vote: vote(sender),
                    prev_log_id: None,
                    entries: Vec::new(),
                    leader_commit: None,
                }),
            ),
            ("vote", Request::Vote(VoteRequest::new(vote(sender), None))),
            (
                "snapshot",
                Request::InstallSnapshot(InstallSnapshotRequest {
                    vote: vote(sender),
                    meta: SnapshotMeta {
                        last_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 1)),
                        last_membership: StoredMembership::default(),
                        snapshot_id: "s".into(),
                    },
                    offset: 0,
                    data: Vec::new(),
                    done: true,
                }),
            ),
            (
                "grant",
                w(Command::Grant {
                    lease: 7,
                    ttl_ms: 3000,
                }),
            ),
            ("revoke", w(Command::Revoke { lease: 7 })),
            (
                "register",
                w(Command::Register {
                    lease: 7,
                    node_id: me.into(),
                    value: Vec::new(),
                    holder: None,
                }),
            ),
            (
                "put member",
                w(Command::PutMember {
                    node_id: me.into(),
                    value: Vec::new(),
                }),
            ),
            (
                "campaign",
                w(Command::Campaign {
                    lease: 7,
                    node_id: me.into(),
                }),
            ),
            ("resign", w(Command::Resign { term: 3 })),
            (
                "write ring",
                w(Command::WriteRing {
                    term: 3,
                    value: Vec::new(),
                    served: Vec::new(),
                    expected: None,
                    copies: Default::default(),
                }),
            ),
            (
                "write copies",
                w(Command::WriteCopies {
                    term: 3,
                    expected: 1,
                    copies: Default::default(),
                }),
            ),
            (
                "forget member",
                w(Command::ForgetMember {
                    term: 3,
                    node_id: "n9".into(),
                }),
            ),
            (
                "put request",
                w(Command::PutRequest {
                    key: "r".into(),
                    value: Vec::new(),
                    by: None,
                }),
            ),
            ("state", Request::State),
            (
                "wait",
                Request::Wait {
                    after: 1,
                    timeout_ms: 10,
                },
            ),
            ("heartbeat", Request::Heartbeat { lease: 7 }),
            (
                "probe",
                Request::Probe {
                    name: me.into(),
                    proposal: 1,
                },
            ),
            (
                "join",
                Request::Join {
                    name: "n4".into(),
                    addr: "127.0.0.1:1".into(),
                },
            ),
            (
                "leave",
                Request::Leave {
                    name: me.into(),
                    below_voter_floor: false,
                },
            ),
            (
                "leave below floor",
                Request::Leave {
                    name: me.into(),
                    below_voter_floor: true,
                },
            ),
            ("members", Request::Members),
        ]
    }

    /// The facts a leading voter holding lease 7 gives (every fact in `me`'s favour).
    fn favourable(me: &str) -> Facts {
        Facts {
            sender_is_voter: true,
            leader: Some(me.into()),
            lease_holder: LeaseHolder::Member(me.into()),
        }
    }

    fn verdict(r: Result<(), Refusal>) -> &'static str {
        match r {
            Ok(()) => "ok",
            Err(Refusal::Denied(_)) => "denied",
            Err(Refusal::Fenced(_)) => "fenced",
        }
    }

    #[test]
    fn every_request_kind_against_every_caller() {
        let member = Caller::Cert(Role::Member(ME.into()));
        let operator = Caller::Cert(Role::Operator("alice".into()));
        let refused = Caller::Refused("certificate serial 0a is revoked".into());
        // (request, member acting for itself with every fact in its favour, operator)
        let table = [
            ("append", "ok", "denied"),
            ("vote", "ok", "denied"),
            ("snapshot", "ok", "denied"),
            ("grant", "ok", "denied"),
            ("revoke", "ok", "denied"),
            ("register", "ok", "denied"),
            ("put member", "ok", "denied"),
            ("campaign", "ok", "denied"),
            ("resign", "ok", "denied"),
            ("write ring", "ok", "denied"),
            ("write copies", "ok", "denied"),
            ("forget member", "ok", "denied"),
            ("put request", "ok", "ok"),
            ("state", "ok", "ok"),
            ("wait", "ok", "ok"),
            ("heartbeat", "ok", "denied"),
            ("probe", "ok", "denied"),
            ("join", "denied", "ok"),
            ("leave", "ok", "ok"),
            ("leave below floor", "denied", "ok"),
            ("members", "ok", "ok"),
        ];
        let requests = every_request(ME, ME);
        assert_eq!(
            requests.len(),
            table.len(),
            "every request kind is in the table"
        );
        for ((name, req), (row, as_member, as_operator)) in requests.iter().zip(table) {
            assert_eq!(*name, row);
            let facts = favourable(ME);
            assert_eq!(
                verdict(authorize(&member, req, &facts)),
                as_member,
                "member: {name}"
            );
            assert_eq!(
                verdict(authorize(&operator, req, &Facts::default())),
                as_operator,
                "operator: {name}"
            );
            assert_eq!(
                verdict(authorize(&refused, req, &facts)),
                "denied",
                "refused: {name}"
            );
            for open in [Caller::Local, Caller::Insecure, Caller::AnyCertificate] {
                assert_eq!(
                    verdict(authorize(&open, req, &Facts::default())),
                    "ok",
                    "{open:?}: {name}"
                );
            }
        }
    }

    #[test]
    fn a_member_acting_for_another_is_refused_and_a_follower_is_fenced() {
        let member = Caller::Cert(Role::Member(ME.into()));
        // Raft messages and records for another member, every fact in the caller's favour.
        let table = [
            ("append", "denied"),
            ("vote", "denied"),
            ("snapshot", "denied"),
            ("register", "denied"),
            ("put member", "denied"),
            ("campaign", "denied"),
            ("leave", "denied"),
            ("leave below floor", "denied"),
            ("probe", "ok"),
        ];
        let others = every_request(OTHER, OTHER);
        for (name, want) in table {
            let req = &others.iter().find(|(n, _)| *n == name).unwrap().1;
            assert_eq!(
                verdict(authorize(&member, req, &favourable(ME))),
                want,
                "member {ME} sending {name} for {OTHER}"
            );
        }
        // Facts against the caller: another leads, another holds the lease, not a voter.
        let against = Facts {
            sender_is_voter: false,
            leader: Some(OTHER.into()),
            lease_holder: LeaseHolder::Member(OTHER.into()),
        };
        let table = [
            ("append", "denied"),
            ("vote", "denied"),
            ("snapshot", "denied"),
            ("resign", "fenced"),
            ("write ring", "fenced"),
            ("write copies", "fenced"),
            ("forget member", "fenced"),
            ("revoke", "denied"),
            ("heartbeat", "denied"),
            ("register", "ok"),
            ("campaign", "ok"),
        ];
        let mine = every_request(ME, ME);
        for (name, want) in table {
            let req = &mine.iter().find(|(n, _)| *n == name).unwrap().1;
            assert_eq!(
                verdict(authorize(&member, req, &against)),
                want,
                "member {ME} sending {name} while {OTHER} leads and holds lease 7"
            );
        }
        // Nobody leads: a ring write is fenced; a lease nobody holds may be renewed; a lease
        // whose holder was not looked up may not (fail closed).
        let nobody = Facts {
            lease_holder: LeaseHolder::Nobody,
            ..Facts::default()
        };
        let write = &mine.iter().find(|(n, _)| *n == "write ring").unwrap().1;
        assert_eq!(verdict(authorize(&member, write, &nobody)), "fenced");
        let beat = &mine.iter().find(|(n, _)| *n == "heartbeat").unwrap().1;
        assert_eq!(verdict(authorize(&member, beat, &nobody)), "ok");
        assert_eq!(
            verdict(authorize(&member, beat, &Facts::default())),
            "denied"
        );
        let revoke = &mine.iter().find(|(n, _)| *n == "revoke").unwrap().1;
        assert_eq!(
            verdict(authorize(&member, revoke, &Facts::default())),
            "denied"
        );
    }

    #[test]
    fn only_a_members_certificate_needs_the_groups_state() {
        let member = Caller::Cert(Role::Member(ME.into()));
        let want = [
            ("append", Need::Voter(raft_id(ME))),
            ("vote", Need::Voter(raft_id(ME))),
            ("snapshot", Need::Voter(raft_id(ME))),
            ("revoke", Need::LeaseHolder(7)),
            ("heartbeat", Need::LeaseHolder(7)),
            ("resign", Need::Leader),
            ("write ring", Need::Leader),
            ("write copies", Need::Leader),
            ("forget member", Need::Leader),
        ];
        for (name, req) in every_request(ME, ME) {
            let expected = want
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(Need::Nothing, |(_, need)| *need);
            assert_eq!(needs(&member, &req), expected, "{name}");
            for other in [
                Caller::Local,
                Caller::Insecure,
                Caller::AnyCertificate,
                Caller::Refused("no client certificate".into()),
                Caller::Cert(Role::Operator("alice".into())),
            ] {
                assert_eq!(needs(&other, &req), Need::Nothing, "{other:?}: {name}");
            }
        }
    }

    #[test]
    fn a_connection_counts_against_its_roles_share_and_a_refused_or_small_caller_reads_little() {
        let member = Caller::Cert(Role::Member("n1".into()));
        let operator = Caller::Cert(Role::Operator("alice".into()));
        let revoked = Caller::Refused("certificate 0a is revoked".into());
        // (caller, the holder of its connection number 7, the largest request it may send;
        // a member: as a voter)
        let cases = [
            (
                &member,
                Holder::Role(Role::Member("n1".into())),
                crate::wire::MAX_FRAME,
            ),
            (
                &operator,
                Holder::Role(Role::Operator("alice".into())),
                SMALL_REQUEST,
            ),
            (&revoked, Holder::Nobody, SMALL_REQUEST),
            (&Caller::Local, Holder::Unnamed(7), crate::wire::MAX_FRAME),
            (
                &Caller::Insecure,
                Holder::Unnamed(7),
                crate::wire::MAX_FRAME,
            ),
            (
                &Caller::AnyCertificate,
                Holder::Unnamed(7),
                crate::wire::MAX_FRAME,
            ),
        ];
        for (caller, want, largest) in cases {
            assert_eq!(holder(caller, 7), want, "{caller:?}");
            assert_eq!(largest_request(caller, true), largest, "{caller:?}");
        }
        // A member that is not a voter: its records and ring writes, no snapshots; the voter
        // flag changes nothing for anyone else.
        assert_eq!(largest_request(&member, false), MEMBER_REQUEST);
        assert_eq!(largest_request(&operator, false), SMALL_REQUEST);
        assert_eq!(
            largest_request(&Caller::Local, false),
            crate::wire::MAX_FRAME
        );
        // Two revoked certificates share one share, whatever they name.
        let other = Caller::Refused("certificate 0b is revoked".into());
        assert_eq!(holder(&other, 8), holder(&revoked, 9));
    }
}
