// OAuth 2.0 / OIDC test server for end-to-end tests, built on oidc-provider 9.x.
//
//   npm ci --prefix tests/oidc && node tests/oidc/server.mjs
//
// Prints exactly one line on stdout once listening:  {"issuer":"http://127.0.0.1:PORT","port":PORT}
// (plus "mtls":"https://127.0.0.1:PORT2" when the mutual-TLS listener below is on)
// Everything else (oidc-provider notices included) goes to stderr. Exits when stdin closes
// (set OIDC_NO_STDIN_EXIT=1 to disable), on SIGTERM and on SIGINT. See README-style notes below.
//
// Env: OIDC_CC_BASIC_SECRET, OIDC_CC_POST_SECRET, OIDC_RT_SECRET, OIDC_REDIRECT_URIS (comma separated),
//      OIDC_ACCESS_TOKEN_TTL (s, 3600), OIDC_REFRESH_TOKEN_TTL (s, 14 days), OIDC_PORT (0 = ephemeral),
//      OIDC_ROT_SECRET (cc-rot's secret), OIDC_CLIENT_JWKS (a public JWK Set: the keys of the
//      pk-rs256, pk-es256 and jb-client clients; each key's `alg` picks the clients it belongs to).
//
// Clients: cc-basic (client_secret_basic), cc-post (client_secret_post): client_credentials,
//          scope "read write admin". rt-client (client_secret_basic): authorization_code +
//          refresh_token, PKCE S256 required, scope "openid offline_access read write".
//          Refresh tokens rotate on every use; replaying a used one -> invalid_grant (and, as
//          oidc-provider does, the whole grant is revoked, so the rotated successor dies too).
//          cc-rot (client_secret_basic, OIDC_ROT_SECRET): client_credentials, for secret rotation.
//          pk-rs256 / pk-es256 (private_key_jwt, keys from OIDC_CLIENT_JWKS): client_credentials;
//          oidc-provider refuses an expired assertion and a replayed jti.
//          jb-client (client_secret_basic "jb-secret"): only the JWT bearer grant (RFC 7523 §2.1,
//          registered below): the assertion must be signed by a key of OIDC_CLIENT_JWKS, iss =
//          jb-client, aud = the issuer or token endpoint, unexpired, jti never seen before.
//
// Mutual TLS (RFC 8705), on when OIDC_MTLS_CERT and OIDC_MTLS_KEY are set:
//   OIDC_MTLS_CERT, OIDC_MTLS_KEY  paths of the HTTPS listener's certificate and key (for 127.0.0.1)
//   OIDC_MTLS_CA                   path of the CA that issues client certificates (socket.authorized)
//   OIDC_MTLS_SUBJECT              tls_client_auth_subject_dn of mtls-client (default CN=mtls-client)
//   OIDC_MTLS_SELF_SIGNED          path of a self-signed client certificate (mtls-self-signed)
//   A second listener, https://127.0.0.1:PORT2, serves the same provider; it asks for a client
//   certificate (requestCert, rejectUnauthorized: false: oidc-provider decides). Discovery lists
//   it as mtls_endpoint_aliases (token, revocation, introspection); the issuer stays plain HTTP.
//   Clients: mtls-client (tls_client_auth, subject DN OIDC_MTLS_SUBJECT, CA OIDC_MTLS_CA) and, with
//   OIDC_MTLS_SELF_SIGNED, mtls-self-signed (self_signed_tls_client_auth, that certificate in its
//   jwks x5c): client_credentials, scope "read write admin". Access tokens are not bound to the
//   certificate (certificateBoundAccessTokens off), so cc-basic can introspect them.
// Device flow (RFC 8628, features.deviceFlow):
//   Env: OIDC_DEVICE_INTERVAL (s; added as `interval` to device authorization responses, which
//        oidc-provider leaves out, meaning 5 s), OIDC_DEVICE_CODE_TTL (s, 600),
//        OIDC_DEVICE_SECRET (device-basic's secret, "device-secret").
//   Clients: device-client (public, token_endpoint_auth_method none) and device-basic
//        (client_secret_basic): device_code + refresh_token, scope "openid offline_access read
//        write"; a refresh token is issued when offline_access is granted.
//   1. POST /device/auth  client_id(+auth), scope=...  -> {device_code,user_code,verification_uri,
//        verification_uri_complete,expires_in[,interval]}
//   2. GET /device -> HTML form with a hidden xsrf;  POST /device xsrf=X&user_code=U -> confirm
//      page (a new hidden xsrf);  POST /device xsrf=X2&user_code=U&confirm=yes (or abort=yes:
//      access_denied) -> 303 /interaction/UID: then login and consent as below, ending on the
//      "Sign-in Success" page (200). Keep one cookie jar throughout.
//   3. POST /token grant_type=urn:ietf:params:oauth:grant-type:device_code&device_code=D ->
//      authorization_pending until approved, then tokens; expired_token after the TTL.
//   GET  /test/device/polls   -> {"polls_ms":[epoch ms of each device_code poll],"device_codes":[the
//                             device_code of each poll],"issued":[every token issued to a device-*
//                             client],"slow_down_sent":n}
//   POST /test/device/faults  {"slow_down":N}: the next N device_code polls answer 400 slow_down
//                             (oidc-provider 9 never sends slow_down itself); clears polls_ms and
//                             device_codes.
//
// Login + consent with the dev interactions (verified with curl; keep a cookie jar, -c/-b):
//   1. GET /auth?client_id=rt-client&response_type=code&redirect_uri=R&scope=openid%20offline_access%20read
//          &state=S&code_challenge=C&code_challenge_method=S256&prompt=consent
//      -> 303 Location: /interaction/UID          (sets _interaction and _interaction_resume cookies)
//   2. (optional) GET /interaction/UID -> 200 HTML login form
//   3. POST /interaction/UID  form: prompt=login&login=test-user&password=x
//      -> 303 Location: http://ISSUER/auth/UID
//   4. GET /auth/UID -> 303 Location: /interaction/UID2 (consent prompt; sets _session cookie)
//   5. POST /interaction/UID2 form: prompt=consent
//      -> 303 Location: http://ISSUER/auth/UID2
//   6. GET /auth/UID2 -> 303 Location: R?code=CODE&state=S&iss=ISSUER
//   7. POST /token (Basic rt-client) grant_type=authorization_code&code=CODE&redirect_uri=R&code_verifier=V
//   (Any login is accepted; the password is ignored. offline_access is dropped by oidc-provider if a
//    `prompt` parameter is sent without `consent`; sending no prompt at all also works.)
//
// Test-control endpoints (JSON, no auth):
//   GET  /test/stats   -> {"token_requests":N,"by_grant":{"client_credentials":n,...},"errors":n}
//   POST /test/reset   -> zero counters, clear faults
//   POST /test/faults  {"delay_ms","fail_count","fail_status","fail_body","fail_content_type"}
//                      (replaces the previous fault settings)
//   POST /test/mint-refresh-token {"client_id":"rt-client","scope":"openid offline_access read",
//                      "account_id":"test-user"} -> {"refresh_token":"..."}
//   POST /test/mint-subject-token {"sub":"alice","ttl":600,"format":"jwt"|"opaque"}
//                      -> {"subject_token":"...","exp":N}  (a user's access token, for token exchange)

// oidc-provider prints NOTICEs with console.info (stdout): route all console output to stderr
// before it is loaded, so stdout only carries the issuer line.
for (const m of ['log', 'info', 'debug', 'warn']) console[m] = (...a) => console.error(...a);

import http from 'node:http';
import crypto from 'node:crypto';

const { default: Provider } = await import('oidc-provider');

const env = (k, d) => process.env[k] ?? d;
const int = (k, d, min = 1) => {
  const v = Number.parseInt(env(k, String(d)), 10);
  if (!Number.isFinite(v) || v < min) throw new Error(`${k} must be an integer >= ${min}`);
  return v;
};
const AT_TTL = int('OIDC_ACCESS_TOKEN_TTL', 3600);
const RT_TTL = int('OIDC_REFRESH_TOKEN_TTL', 14 * 24 * 3600);
const REDIRECT_URIS = env('OIDC_REDIRECT_URIS', 'http://127.0.0.1:8080/oauth/callback')
  .split(',').map((s) => s.trim()).filter(Boolean);

const ccClient = (id, secret, method) => ({
  client_id: id,
  client_secret: secret,
  token_endpoint_auth_method: method,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: 'read write admin',
});
const clientJwks = JSON.parse(env('OIDC_CLIENT_JWKS', '{"keys":[]}'));
const keysFor = (alg) => ({ keys: clientJwks.keys.filter((k) => k.alg === alg) });
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const pkClient = (id, alg) => ({
  client_id: id,
  token_endpoint_auth_method: 'private_key_jwt',
  token_endpoint_auth_signing_alg: alg,
  jwks: keysFor(alg),
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: 'read write admin',
});
// ---- device flow (RFC 8628) -----------------------------------------------------------------
const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
const DEVICE_INTERVAL = process.env.OIDC_DEVICE_INTERVAL ? int('OIDC_DEVICE_INTERVAL', 5) : undefined;
const DEVICE_CODE_TTL = int('OIDC_DEVICE_CODE_TTL', 600);
const deviceClient = (id, secret) => ({
  client_id: id,
  ...(secret ? { client_secret: secret } : {}),
  token_endpoint_auth_method: secret ? 'client_secret_basic' : 'none',
  grant_types: [DEVICE_GRANT, 'refresh_token'],
  response_types: [],
  redirect_uris: [],
  scope: 'openid offline_access read write',
});
const deviceClients = [
  deviceClient('device-client'),
  deviceClient('device-basic', env('OIDC_DEVICE_SECRET', 'device-secret')),
];
const deviceTest = { polls_ms: [], device_codes: [], issued: [], slow_down: 0, slow_down_sent: 0 };
// Called for every POST /token with this grant: records the poll; true when it answered.
const deviceTokenHook = (raw, res) => {
  deviceTest.polls_ms.push(Date.now());
  deviceTest.device_codes.push(new URLSearchParams(raw.toString()).get('device_code'));
  if (deviceTest.slow_down <= 0) return false;
  deviceTest.slow_down -= 1;
  deviceTest.slow_down_sent += 1;
  res.writeHead(400, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ error: 'slow_down', error_description: 'test server: poll less often' }));
  return true;
};
async function deviceControl(req, res, path) {
  if (req.method === 'GET' && path === '/test/device/polls') {
    return sendJson(res, 200, {
      polls_ms: deviceTest.polls_ms,
      device_codes: deviceTest.device_codes,
      issued: deviceTest.issued,
      slow_down_sent: deviceTest.slow_down_sent,
    });
  }
  if (req.method === 'POST' && path === '/test/device/faults') {
    const raw = (await readBody(req)).toString();
    const body = raw.trim() ? JSON.parse(raw) : {};
    Object.assign(deviceTest, {
      polls_ms: [], device_codes: [], slow_down: body.slow_down ?? 0, slow_down_sent: 0,
    });
    return sendJson(res, 200, { slow_down: deviceTest.slow_down });
  }
  return sendJson(res, 404, { error: 'not found' });
}
// ---- end device flow ------------------------------------------------------------------------

const clients = [
  ...deviceClients,
  ccClient('cc-rot', env('OIDC_ROT_SECRET', 'cc-rot-secret'), 'client_secret_basic'),
  ...(clientJwks.keys.length ? [pkClient('pk-rs256', 'RS256'), pkClient('pk-es256', 'ES256')] : []),
  {
    client_id: 'jb-client',
    client_secret: 'jb-secret',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: [JWT_BEARER],
    response_types: [],
    redirect_uris: [],
    scope: 'read write admin',
  },
  ccClient('cc-basic', env('OIDC_CC_BASIC_SECRET', 'cc-basic-secret'), 'client_secret_basic'),
  ccClient('cc-post', env('OIDC_CC_POST_SECRET', 'cc-post-secret'), 'client_secret_post'),
  {
    client_id: 'rt-client',
    client_secret: env('OIDC_RT_SECRET', 'rt-secret'),
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: REDIRECT_URIS,
    scope: 'openid offline_access read write',
  },
];

// ---- RFC 8693 token exchange: its client ----------------------------------------------------
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
clients.push({
  client_id: 'tx-client',
  client_secret: env('OIDC_TX_SECRET', 'tx-secret'),
  token_endpoint_auth_method: 'client_secret_basic',
  grant_types: [TOKEN_EXCHANGE],
  response_types: [],
  redirect_uris: [],
  scope: 'read write',
});

// Listen first: the issuer must contain the ephemeral port, and the Provider needs the issuer.
let handler = (req, res) => { res.statusCode = 503; res.end(); };
const server = http.createServer((req, res) => handler(req, res));
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(int('OIDC_PORT', 0, 0), '127.0.0.1', resolve);
});
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

// ---- mutual TLS (RFC 8705) -----------------------------------------------------------------
// Self-contained: everything the mTLS listener adds to the Provider is in `mtls`.
const mtls = await (async () => {
  const certPath = env('OIDC_MTLS_CERT');
  const keyPath = env('OIDC_MTLS_KEY');
  if (!certPath || !keyPath) return { clients: [], features: {}, config: {}, line: {} };
  const fs = await import('node:fs');
  const https = await import('node:https');
  const caPath = env('OIDC_MTLS_CA');
  const listener = https.createServer({
    cert: fs.readFileSync(certPath),
    key: fs.readFileSync(keyPath),
    ...(caPath ? { ca: fs.readFileSync(caPath) } : {}),
    requestCert: true,
    rejectUnauthorized: false,
  }, (req, res) => handler(req, res));
  await new Promise((resolve, reject) => {
    listener.once('error', reject);
    listener.listen(0, '127.0.0.1', resolve);
  });
  const base = `https://127.0.0.1:${listener.address().port}`;
  const mtlsClient = (id, method, extra) => ({
    client_id: id,
    token_endpoint_auth_method: method,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'read write admin',
    ...extra,
  });
  const selfSignedPath = env('OIDC_MTLS_SELF_SIGNED');
  const selfSigned = selfSignedPath ? new crypto.X509Certificate(fs.readFileSync(selfSignedPath)) : null;
  const peer = (ctx) => ctx.req.socket.getPeerX509Certificate?.();
  return {
    listener,
    line: { mtls: base },
    clients: [
      mtlsClient('mtls-client', 'tls_client_auth', {
        tls_client_auth_subject_dn: env('OIDC_MTLS_SUBJECT', 'CN=mtls-client'),
      }),
      ...(selfSigned ? [mtlsClient('mtls-self-signed', 'self_signed_tls_client_auth', {
        jwks: { keys: [{ ...selfSigned.publicKey.export({ format: 'jwk' }), x5c: [selfSigned.raw.toString('base64')] }] },
      })] : []),
    ],
    features: {
      mTLS: {
        enabled: true,
        tlsClientAuth: true,
        selfSignedTlsClientAuth: true,
        certificateBoundAccessTokens: false,
        getCertificate: peer,
        // Verified against OIDC_MTLS_CA by Node's TLS layer.
        certificateAuthorized: (ctx) => ctx.req.socket.authorized === true,
        // Node writes the subject one RDN a line; a one-RDN DN such as CN=x compares as is.
        certificateSubjectMatches: (ctx, property, expected) => property === 'tls_client_auth_subject_dn'
          && peer(ctx)?.subject.split('\n').join(',') === expected,
      },
    },
    config: {
      // oidc-provider's defaults plus the two RFC 8705 methods.
      clientAuthMethods: ['client_secret_basic', 'client_secret_jwt', 'client_secret_post',
        'private_key_jwt', 'none', 'tls_client_auth', 'self_signed_tls_client_auth'],
      discovery: {
        mtls_endpoint_aliases: {
          token_endpoint: `${base}/token`,
          revocation_endpoint: `${base}/token/revocation`,
          introspection_endpoint: `${base}/token/introspection`,
        },
      },
    },
  };
})();

const signingKey = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })
  .privateKey.export({ format: 'jwk' });

const provider = new Provider(issuer, {
  ...mtls.config,
  clients: [...clients, ...mtls.clients],
  // Non-OIDC scopes must be listed here, otherwise oidc-provider silently drops them from
  // authorization requests (there are no resource indicators configured).
  scopes: ['openid', 'offline_access', 'read', 'write', 'admin'],
  claims: { openid: ['sub'] },
  jwks: { keys: [{ ...signingKey, kid: 'test-rs256', alg: 'RS256', use: 'sig' }] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  // Any login is an account; the only claim is sub.
  findAccount: (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    // Any authenticated client may introspect any token.
    introspection: { enabled: true, allowedPolicy: async () => true },
    // Default policy: a client may only revoke its own tokens (otherwise invalid_request).
    revocation: { enabled: true },
    ...mtls.features,
    deviceFlow: { enabled: true },
  },
  pkce: { required: () => true }, // oidc-provider 9 only supports S256
  // Default only rotates confidential clients' RTs after 70% of their TTL: force every use.
  rotateRefreshToken: true,
  issueRefreshToken: async (ctx, client, source) => client.grantTypeAllowed('refresh_token')
    && source.scopes.has('offline_access'),
  ttl: {
    AccessToken: AT_TTL,
    ClientCredentials: AT_TTL,
    RefreshToken: RT_TTL,
    // A grant that dies takes its refresh tokens with it: keep it alive well past any RT.
    Grant: Math.max(RT_TTL * 10, 365 * 24 * 3600),
    AuthorizationCode: 600,
    DeviceCode: DEVICE_CODE_TTL,
    IdToken: 3600,
    Interaction: 3600,
    Session: 14 * 24 * 3600,
  },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));
// oidc-provider sends no `interval`; tests poll faster with one (the body is sent after this).
provider.on('device_authorization.success', (ctx, body) => {
  if (DEVICE_INTERVAL !== undefined) body.interval = DEVICE_INTERVAL;
});
// Every access and refresh token issued to a device client, for the tests' leak checks.
provider.on('grant.success', (ctx) => {
  if (!ctx.oidc.client?.clientId.startsWith('device-')) return;
  for (const k of ['access_token', 'refresh_token', 'id_token']) {
    if (ctx.body?.[k]) deviceTest.issued.push(ctx.body[k]);
  }
});

// RFC 7523 §2.1 JWT bearer grant: verifies the assertion against OIDC_CLIENT_JWKS and issues a
// client-credentials-style access token (introspectable) with the requested scopes.
const { jwtVerify, createLocalJWKSet } = await import('jose');
const seenJti = new Set();
provider.registerGrantType(JWT_BEARER, async (ctx) => {
  const { client, params } = ctx.oidc;
  const fail = (description) => {
    ctx.status = 400;
    ctx.body = { error: 'invalid_grant', error_description: description };
  };
  let payload;
  try {
    ({ payload } = await jwtVerify(params.assertion, createLocalJWKSet(clientJwks), {
      issuer: client.clientId,
      audience: [issuer, `${issuer}/token`],
      requiredClaims: ['exp', 'jti', 'sub'],
    }));
  } catch (e) {
    return fail(`assertion rejected: ${e.code ?? e.message}`);
  }
  if (seenJti.has(payload.jti)) return fail('assertion replayed (jti already used)');
  seenJti.add(payload.jti);
  const scope = (params.scope ?? '').split(' ').filter((s) => client.scope.split(' ').includes(s)).join(' ');
  const token = new provider.ClientCredentials({ client, scope, extra: { sub: payload.sub } });
  ctx.body = {
    access_token: await token.save(),
    expires_in: token.expiration,
    token_type: 'Bearer',
    scope,
  };
}, ['assertion', 'scope']);

// ---- RFC 8693 token exchange: the grant -------------------------------------------------------
// Subject tokens are a user's access tokens from this server: a JWT signed with its key, or an
// opaque AccessToken. The issued token is capped at the subject token's expiry.
const TT_ACCESS = 'urn:ietf:params:oauth:token-type:access_token';
const TT_JWT = 'urn:ietf:params:oauth:token-type:jwt';
const TX_AUDIENCES = ['orders-api', 'billing-api'];
const { SignJWT, importJWK } = await import('jose');
const { d, p, q, dp, dq, qi, ...publicSigningKey } = signingKey;
const serverJwks = createLocalJWKSet({ keys: [{ ...publicSigningKey, kid: 'test-rs256', alg: 'RS256' }] });
const txTokenClient = 'rt-client'; // the client opaque subject tokens are issued to

async function subjectOf(token) {
  if (token.split('.').length === 3) {
    const { payload } = await jwtVerify(token, serverJwks, { issuer, requiredClaims: ['exp', 'sub'] });
    return { sub: payload.sub, exp: payload.exp };
  }
  const at = await provider.AccessToken.find(token);
  if (!at || !at.isValid) throw new Error('unknown or expired access token');
  return { sub: at.accountId, exp: at.exp };
}

provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
  const { client, params } = ctx.oidc;
  const fail = (error, description) => {
    ctx.status = 400;
    ctx.body = { error, error_description: description };
  };
  if (![TT_ACCESS, TT_JWT].includes(params.subject_token_type)) {
    return fail('invalid_request', 'subject_token_type must be access_token or jwt');
  }
  if (params.requested_token_type && params.requested_token_type !== TT_ACCESS) {
    return fail('invalid_request', 'only access tokens are issued');
  }
  let subject;
  try {
    subject = await subjectOf(params.subject_token ?? '');
  } catch (e) {
    return fail('invalid_request', `subject token rejected: ${e.code ?? e.message}`);
  }
  const audience = [params.audience ?? []].flat();
  if (audience.length === 0 || !audience.every((a) => TX_AUDIENCES.includes(a))) {
    return fail('invalid_target', `audience must be one of ${TX_AUDIENCES.join(', ')}`);
  }
  const scope = (params.scope ?? '').split(' ').filter((s) => client.scope.split(' ').includes(s)).join(' ');
  const remaining = subject.exp - Math.floor(Date.now() / 1000);
  // A user's access token (introspection shows sub), under a grant of its own for tx-client.
  const grant = new provider.Grant({ accountId: subject.sub, clientId: client.clientId });
  grant.addOIDCScope(scope);
  const token = new provider.AccessToken({
    accountId: subject.sub,
    client,
    grantId: await grant.save(),
    gty: TOKEN_EXCHANGE,
    scope,
    expiresIn: Math.max(1, Math.min(AT_TTL, remaining)),
  });
  ctx.body = {
    access_token: await token.save(),
    issued_token_type: TT_ACCESS,
    token_type: 'Bearer',
    expires_in: token.expiration,
    scope,
  };
}, ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'audience', 'resource',
  'scope', 'requested_token_type'], ['audience', 'resource']);

async function mintSubjectToken(body) {
  const sub = body.sub ?? 'test-user';
  const ttl = Number.isInteger(body.ttl) ? body.ttl : 600;
  const now = Math.floor(Date.now() / 1000);
  if (body.format === 'opaque') {
    const client = await provider.Client.find(txTokenClient);
    const grant = new provider.Grant({ accountId: sub, clientId: txTokenClient });
    grant.addOIDCScope('openid read');
    const at = new provider.AccessToken({
      accountId: sub, client, grantId: await grant.save(), scope: 'openid read', gty: 'authorization_code', expiresIn: ttl,
    });
    return { subject_token: await at.save(), exp: now + ttl };
  }
  // A JWT access token of this server (ttl may be negative: an expired one).
  const key = await importJWK(signingKey, 'RS256');
  const jwt = await new SignJWT({ scope: 'read', client_id: txTokenClient, jti: crypto.randomUUID() })
    .setProtectedHeader({ alg: 'RS256', kid: 'test-rs256', typ: 'at+jwt' })
    .setIssuer(issuer).setSubject(sub).setAudience(issuer).setIssuedAt(now - 1).setExpirationTime(now + ttl)
    .sign(key);
  return { subject_token: jwt, exp: now + ttl };
}

// ---- test-control state -------------------------------------------------------------------
const newStats = () => ({ token_requests: 0, by_grant: {}, errors: 0 });
const noFaults = () => ({ delay_ms: 0, fail_count: 0, fail_status: 503,
  fail_body: '{"error":"temporarily_unavailable"}', fail_content_type: 'application/json' });
let stats = newStats();
let faults = noFaults();

const readBody = async (req) => {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks);
};
const sendJson = (res, status, obj) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(obj));
};

async function mintRefreshToken(body) {
  const clientId = body.client_id ?? 'rt-client';
  const scope = body.scope ?? 'openid offline_access read';
  const accountId = body.account_id ?? 'test-user';
  const client = await provider.Client.find(clientId);
  if (!client) throw Object.assign(new Error(`unknown client ${clientId}`), { status: 400 });
  const grant = new provider.Grant({ accountId, clientId });
  grant.addOIDCScope(scope);
  const grantId = await grant.save();
  const rt = new provider.RefreshToken({
    accountId, client, grantId, scope,
    gty: 'authorization_code', // as if it came from a code exchange
    rotations: 0,
    iiat: Math.floor(Date.now() / 1000),
    authTime: Math.floor(Date.now() / 1000),
  });
  return { refresh_token: await rt.save() };
}

async function testControl(req, res, path) {
  if (req.method === 'GET' && path === '/test/stats') return sendJson(res, 200, stats);
  if (req.method !== 'POST') return sendJson(res, 405, { error: 'method not allowed' });
  const raw = (await readBody(req)).toString();
  let body;
  try {
    body = raw.trim() ? JSON.parse(raw) : {};
  } catch {
    return sendJson(res, 400, { error: 'body must be JSON' });
  }
  switch (path) {
    case '/test/reset':
      stats = newStats();
      faults = noFaults();
      return sendJson(res, 200, { ok: true });
    case '/test/faults':
      faults = { ...noFaults(), ...body };
      return sendJson(res, 200, faults);
    case '/test/mint-refresh-token':
      return sendJson(res, 200, await mintRefreshToken(body));
    case '/test/mint-subject-token':
      return sendJson(res, 200, await mintSubjectToken(body));
    default:
      return sendJson(res, 404, { error: 'not found' });
  }
}

const providerCallback = provider.callback();

handler = async (req, res) => {
  const path = new URL(req.url, issuer).pathname;
  try {
    if (path.startsWith('/test/device/')) return await deviceControl(req, res, path);
    if (path.startsWith('/test/')) return await testControl(req, res, path);
    if (req.method === 'POST' && path === '/token') {
      // Count at the HTTP layer. The body is consumed here to learn grant_type; oidc-provider
      // then falls back to req.body (it logs a one-time warning about that on stderr).
      const raw = await readBody(req);
      req.body = raw;
      const grant = new URLSearchParams(raw.toString()).get('grant_type') ?? '(none)';
      stats.token_requests += 1;
      stats.by_grant[grant] = (stats.by_grant[grant] ?? 0) + 1;
      res.on('finish', () => { if (res.statusCode >= 400) stats.errors += 1; });
      if (grant === DEVICE_GRANT && deviceTokenHook(raw, res)) return undefined;
      if (faults.delay_ms > 0) await new Promise((r) => setTimeout(r, faults.delay_ms));
      if (faults.fail_count > 0) {
        faults.fail_count -= 1;
        res.writeHead(faults.fail_status, { 'content-type': faults.fail_content_type });
        return res.end(faults.fail_body);
      }
    }
    return providerCallback(req, res);
  } catch (err) {
    console.error('test server error', err);
    if (!res.headersSent) sendJson(res, err.status ?? 500, { error: String(err.message ?? err) });
    else res.end();
  }
};

process.stdout.write(`${JSON.stringify({ issuer, port, ...mtls.line })}\n`);
console.error(`oidc test server listening on ${issuer}`);

const shutdown = () => {
  server.close();
  mtls.listener?.close();
  mtls.listener?.closeAllConnections?.();
  server.closeAllConnections?.();
  process.exit(0);
};
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
if (process.env.OIDC_NO_STDIN_EXIT !== '1') {
  process.stdin.on('end', shutdown);
  process.stdin.on('close', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
}
