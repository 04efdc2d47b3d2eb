//! `authgate authorize`: a credential's consent step in one command.
//!
//! Authorization-code flow: StartAuthorization returns the provider's URL; the browser
//! (opened here when there is a display) signs in and consents; the provider redirects to
//! the gateway's /oauth/callback, which exchanges the code. Device flow (RFC 8628): the
//! gateway answers with a user code and a verification URI, printed here (with a QR code of
//! the complete URI on a terminal); the user approves on any device while the gateway polls
//! the provider. Either way this command only watches the credential until the gateway
//! reports it ACTIVE (or the flow failed), so no script needs a throwaway local HTTP server.
//!
//! "Done" is judged on the gateway's own timestamps (the credential's `updated_at` read
//! right after the start), never on this machine's clock, so clock skew between the two
//! cannot make a finished flow look unfinished.

use crate::cli::connect::{self, ClientOptions};
use crate::cli::{output, Target, EXIT_EXPIRED, EXIT_FAILURE, EXIT_INTERRUPTED};
use crate::clock::{self, SystemClock};
use crate::proto::v1 as pb;
use clap::Args;
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};
use tonic::Code;

type Client = pb::credential_service_client::CredentialServiceClient<connect::Conn>;

/// How often the credential is polled.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How often the spinner moves.
const SPIN_EVERY: Duration = Duration::from_millis(100);
/// How often a plain progress line is written when stderr is not a terminal.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(30);
/// Used when the gateway does not say when the request expires.
const DEFAULT_EXPIRY: Duration = Duration::from_secs(600);

#[derive(Debug, Args)]
pub struct AuthorizeArgs {
    #[command(flatten)]
    pub client: ClientOptions,
    #[command(flatten)]
    pub target: Target,
    /// Scope to ask consent for (repeat for several); none means the credential's defaults.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Do not try to open a browser; only print the URL.
    #[arg(long)]
    pub no_browser: bool,
    /// Device flow: do not draw the QR code of the verification URI (it is drawn only when
    /// stdout is a terminal).
    #[arg(long)]
    pub no_qr: bool,
    /// Print the StartAuthorization response as one JSON line, then the final credential as
    /// another.
    #[arg(long)]
    pub json: bool,
}

fn ts_key(ts: Option<&prost_types::Timestamp>) -> (i64, i32) {
    ts.map_or((i64::MIN, 0), |t| (t.seconds, t.nanos))
}

/// What one look at the credential says about the flow.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Waiting,
    Active,
    /// The gateway recorded a failure after the start (e.g. the code exchange was refused).
    Failed,
}

/// Judges a polled credential against the one read right after StartAuthorization. A
/// failure is a change to INVALID, or a change that left a `last_error` (a device
/// authorization denied or expired keeps the credential's status and says why there).
fn progress(baseline: &pb::Credential, now: &pb::Credential) -> Progress {
    let changed = ts_key(now.updated_at.as_ref()) > ts_key(baseline.updated_at.as_ref());
    if changed && !now.last_error.is_empty() {
        return Progress::Failed;
    }
    let active = pb::CredentialStatus::Active as i32;
    if now.status == active {
        // Not active before: any transition to ACTIVE is the flow completing. Already
        // active (re-authorization): only a later update counts.
        if baseline.status != active || changed {
            return Progress::Active;
        }
        return Progress::Waiting;
    }
    let failed = [
        pb::CredentialStatus::Invalid as i32,
        pb::CredentialStatus::Revoked as i32,
    ];
    if changed && failed.contains(&now.status) {
        return Progress::Failed;
    }
    Progress::Waiting
}

/// Errors worth polling through: the gateway restarting or briefly overloaded.
fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled
    )
}

/// Starts a browser on `url`: `$BROWSER` (colon-separated commands, `%s` for the URL),
/// `open` on macOS, `xdg-open` when a display exists. Returns what was started.
fn open_browser(url: &str) -> Result<String, String> {
    let mut candidates: Vec<Vec<String>> = Vec::new();
    if let Ok(b) = std::env::var("BROWSER") {
        for cmd in b.split(':').filter(|c| !c.trim().is_empty()) {
            let mut argv: Vec<String> = cmd.split_whitespace().map(str::to_owned).collect();
            if argv.iter().any(|a| a.contains("%s")) {
                argv = argv.iter().map(|a| a.replace("%s", url)).collect();
            } else {
                argv.push(url.to_owned());
            }
            candidates.push(argv);
        }
    }
    if candidates.is_empty() {
        let has_display = ["DISPLAY", "WAYLAND_DISPLAY"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
        if cfg!(target_os = "macos") {
            candidates.push(vec!["open".into(), url.into()]);
        } else if has_display {
            candidates.push(vec!["xdg-open".into(), url.into()]);
        } else {
            return Err("no display (DISPLAY / WAYLAND_DISPLAY unset) and no $BROWSER".into());
        }
    }
    let mut last_err = String::new();
    for argv in candidates {
        let Some((prog, rest)) = argv.split_first() else {
            continue;
        };
        match Command::new(prog)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(mut child) => {
                // Reaped in the background so no zombie outlives a long wait.
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
                return Ok(prog.clone());
            }
            Err(e) => last_err = format!("{prog}: {e}"),
        }
    }
    Err(last_err)
}

/// The progress display on stderr: a spinner on a terminal, a line now and then otherwise.
struct Status {
    tty: bool,
    frame: usize,
    last_plain: Option<tokio::time::Instant>,
    what: String,
    drawn: bool,
}

const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

impl Status {
    fn new(what: String) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            frame: 0,
            last_plain: None,
            what,
            drawn: false,
        }
    }

    fn show(&mut self, left: Duration, note: &str) {
        let left = format_left(left);
        let mut err = std::io::stderr().lock();
        if self.tty {
            self.frame = (self.frame + 1) % FRAMES.len();
            let _ = write!(
                err,
                "\r\x1b[2K{} {} (expires in {left}){note}",
                FRAMES[self.frame], self.what
            );
            let _ = err.flush();
            self.drawn = true;
        } else if self
            .last_plain
            .is_none_or(|t| t.elapsed() >= PLAIN_PROGRESS_EVERY)
        {
            self.last_plain = Some(clock::monotonic_now());
            let _ = writeln!(err, "{} (expires in {left}){note}", self.what);
        }
    }

    fn clear(&mut self) {
        if self.tty && self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

fn format_left(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

pub async fn run(a: AuthorizeArgs) -> anyhow::Result<i32> {
    let gw = connect::connect(&a.client).await?;
    let mut client = gw.credentials();
    let who = format!("{}/{}", a.target.tenant, a.target.credential);
    let get = pb::GetCredentialRequest {
        tenant: a.target.tenant.clone(),
        credential_id: a.target.credential.clone(),
    };

    let started = client
        .start_authorization(pb::StartAuthorizationRequest {
            tenant: a.target.tenant.clone(),
            credential_id: a.target.credential.clone(),
            scopes: a.scopes.clone(),
        })
        .await?
        .into_inner();
    // Read before the URL is shown, so the flow cannot finish before the baseline exists.
    let baseline = client.get_credential(get.clone()).await?.into_inner();
    if started.user_code.is_empty() {
        show_url(&a, &who, &started)?;
    } else {
        show_device_code(&a, &who, &started)?;
    }
    wait(&a, &mut client, &who, &get, &started, &baseline).await
}

/// Shows the URL to open (and opens it when it can).
fn show_url(
    a: &AuthorizeArgs,
    who: &str,
    started: &pb::StartAuthorizationResponse,
) -> anyhow::Result<()> {
    if a.json {
        output::print_json_line(&json!({
            "authorization_url": started.authorization_url,
            "state": started.state,
            "expires_at": output::ts_json(started.expires_at.as_ref()),
            "redirect_uri": started.redirect_uri,
        }))?;
    }
    // The URL goes to stderr so stdout stays clean for scripts (and for --json).
    eprintln!(
        "To authorize {who}, open this URL in a browser and sign in:\n\n  {}\n",
        started.authorization_url
    );
    if !a.no_browser {
        match open_browser(&started.authorization_url) {
            Ok(prog) => eprintln!("(opened with {prog})"),
            Err(why) => eprintln!("(no browser opened: {why}; open the URL yourself)"),
        }
    }
    Ok(())
}

/// Shows the user code and where to enter it (a QR code of the complete URI on a terminal),
/// and opens the page when it can.
fn show_device_code(
    a: &AuthorizeArgs,
    who: &str,
    started: &pb::StartAuthorizationResponse,
) -> anyhow::Result<()> {
    if a.json {
        output::print_json_line(&json!({
            "authorization_url": started.authorization_url,
            "user_code": started.user_code,
            "verification_uri": started.verification_uri,
            "verification_uri_complete": started.verification_uri_complete,
            "expires_at": output::ts_json(started.expires_at.as_ref()),
            "interval_seconds": started.interval_seconds,
        }))?;
    }
    let mut text = format!(
        "To authorize {who}, open this page on any device and enter the code:\n\n  {}\n  code: {}\n",
        started.verification_uri, started.user_code
    );
    let complete = started.verification_uri_complete.as_str();
    if !complete.is_empty() {
        text.push_str(&format!(
            "\nor open this link, which carries the code:\n\n  {complete}\n"
        ));
        if !a.no_qr && !a.json && std::io::stdout().is_terminal() {
            if let Some(qr) = qr_code(complete) {
                text.push('\n');
                text.push_str(&qr);
            }
        }
    }
    eprintln!("{text}");
    let page = if complete.is_empty() {
        started.verification_uri.as_str()
    } else {
        complete
    };
    if !a.no_browser {
        match open_browser(page) {
            Ok(prog) => eprintln!("(opened with {prog})"),
            Err(why) => eprintln!("(no browser opened here: {why}; use another device)"),
        }
    }
    Ok(())
}

/// `url` as a QR code of unicode half blocks, light on dark (as terminals mostly are), with
/// its quiet zone; `None` if it does not fit in a QR code.
fn qr_code(url: &str) -> Option<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(url.as_bytes()).ok()?;
    Some(
        code.render::<Dense1x2>()
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

/// Watches the credential until the flow finishes, the request expires or Ctrl-C; returns
/// the exit code.
async fn wait(
    a: &AuthorizeArgs,
    client: &mut Client,
    who: &str,
    get: &pb::GetCredentialRequest,
    started: &pb::StartAuthorizationResponse,
    baseline: &pb::Credential,
) -> anyhow::Result<i32> {
    let expires_at = started
        .expires_at
        .and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or_else(|| SystemClock.system_time() + DEFAULT_EXPIRY);
    let what = if started.user_code.is_empty() {
        format!("waiting for the provider sign-in for {who}")
    } else {
        format!(
            "waiting for code {} to be approved for {who}",
            started.user_code
        )
    };
    let mut status = Status::new(what);
    // Without a signal handler (it could not be installed) Ctrl-C just kills the process.
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(ctrl_c);
    let mut spin = tokio::time::interval(if status.tty { SPIN_EVERY } else { POLL_EVERY });
    spin.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the first look is one interval after the start.
    poll.tick().await;
    let mut note = String::new();

    loop {
        let left = expires_at
            .duration_since(SystemClock.system_time())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            () = &mut ctrl_c => {
                status.clear();
                eprintln!("interrupted; the URL above still completes the authorization until {} (the gateway finishes it, with or without this command)", output::ts_short(started.expires_at.as_ref()));
                return Ok(EXIT_INTERRUPTED);
            }
            _ = spin.tick() => status.show(left, &note),
            _ = poll.tick() => {
                match client.get_credential(get.clone()).await {
                    Ok(resp) => {
                        note.clear();
                        if let Some(code) = finished(a, who, baseline, &resp.into_inner(), &mut status)? {
                            return Ok(code);
                        }
                    }
                    Err(s) if transient(s.code()) => {
                        note = format!("; gateway: {} {}, retrying", output::code_name(s.code()), s.message());
                    }
                    Err(s) => {
                        status.clear();
                        return Err(s.into());
                    }
                }
                if SystemClock.system_time() >= expires_at {
                    status.clear();
                    eprintln!(
                        "error: the authorization request for {who} expired at {} before the sign-in completed; run `authgate authorize --tenant {} --credential {}` again",
                        output::ts_short(started.expires_at.as_ref()),
                        a.target.tenant,
                        a.target.credential,
                    );
                    return Ok(EXIT_EXPIRED);
                }
            }
        }
    }
}

/// What one look at the credential means for the command: the exit code once the flow has
/// finished either way (after saying so), `None` while it is still waiting.
fn finished(
    a: &AuthorizeArgs,
    who: &str,
    baseline: &pb::Credential,
    cred: &pb::Credential,
    status: &mut Status,
) -> anyhow::Result<Option<i32>> {
    match progress(baseline, cred) {
        Progress::Active => {
            status.clear();
            if a.json {
                output::print_json_line(&output::credential_json(cred))?;
            } else {
                let rt = if cred.has_refresh_token {
                    ", refresh token stored"
                } else {
                    ""
                };
                writeln!(std::io::stdout(), "{who} is ACTIVE{rt}")?;
            }
            Ok(Some(0))
        }
        Progress::Failed => {
            status.clear();
            let hint = if cred.last_error.contains("authgate authorize") {
                String::new()
            } else {
                format!(
                    "; run `authgate authorize --tenant {} --credential {}` again",
                    a.target.tenant, a.target.credential
                )
            };
            eprintln!(
                "error: authorization of {who} failed: the credential is {}{}{hint}",
                output::status_name(cred.status),
                if cred.last_error.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", cred.last_error)
                },
            );
            if a.json {
                output::print_json_line(&output::credential_json(cred))?;
            }
            // The gateway gave up on an expired device code: as when this command's own
            // wait runs out.
            let expired = cred.last_error.starts_with("device authorization expired");
            Ok(Some(if expired { EXIT_EXPIRED } else { EXIT_FAILURE }))
        }
        Progress::Waiting => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(status: pb::CredentialStatus, updated: i64) -> pb::Credential {
        pb::Credential {
            status: status as i32,
            updated_at: Some(prost_types::Timestamp {
                seconds: updated,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn completion_is_judged_on_gateway_timestamps() {
        use pb::CredentialStatus::*;
        let needs = cred(NeedsAuthorization, 100);
        assert_eq!(progress(&needs, &needs), Progress::Waiting);
        // A transition to ACTIVE completes, even with an equal timestamp.
        assert_eq!(progress(&needs, &cred(Active, 100)), Progress::Active);
        // Re-authorizing an ACTIVE credential: only a later update counts.
        let active = cred(Active, 100);
        assert_eq!(progress(&active, &cred(Active, 100)), Progress::Waiting);
        assert_eq!(progress(&active, &cred(Active, 101)), Progress::Active);
        // A failure recorded after the start ends the wait; an old one does not.
        let invalid = cred(Invalid, 100);
        assert_eq!(progress(&invalid, &cred(Invalid, 100)), Progress::Waiting);
        assert_eq!(progress(&needs, &cred(Invalid, 101)), Progress::Failed);
        // A device authorization that ended without a token keeps the status and says why.
        let failed = |status, updated| pb::Credential {
            last_error: "device authorization denied by the user".into(),
            ..cred(status, updated)
        };
        assert_eq!(
            progress(&needs, &failed(NeedsAuthorization, 101)),
            Progress::Failed
        );
        assert_eq!(progress(&active, &failed(Active, 101)), Progress::Failed);
        assert_eq!(
            progress(&failed(Active, 100), &cred(Active, 101)),
            Progress::Active
        );
        assert_eq!(
            progress(&needs, &failed(NeedsAuthorization, 100)),
            Progress::Waiting
        );
    }

    #[test]
    fn the_qr_code_is_drawn_in_half_blocks() {
        let qr = qr_code("http://127.0.0.1:8080/device?user_code=WDJB-MJHT").unwrap();
        let lines: Vec<&str> = qr.lines().collect();
        assert!(lines.len() > 10, "{qr}");
        assert!(lines
            .iter()
            .all(|l| l.chars().count() == lines[0].chars().count()));
        assert!(qr.contains('▀') || qr.contains('▄'), "{qr}");
    }

    #[test]
    fn time_left() {
        assert_eq!(format_left(Duration::from_secs(42)), "42s");
        assert_eq!(format_left(Duration::from_secs(581)), "9m 41s");
    }
}
