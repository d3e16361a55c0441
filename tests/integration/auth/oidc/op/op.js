// A real OpenID Provider for tokengate's delegated-login tests: panva's certified oidc-provider with
// static clients, a few accounts, PKCE (S256) required, RP-initiated logout, and the development login
// and consent pages (devInteractions), which the tests drive by plain HTTP or a headless browser.
//
//   node op.js --port PORT [--redirect-uri URI]... [--post-logout-redirect-uri URI]... [--auth-method M]
//
// Every option may come from the environment instead: OP_PORT, OP_REDIRECT_URIS and
// OP_POST_LOGOUT_REDIRECT_URIS (separated by spaces), OP_AUTH_METHOD. The client secret comes only from
// OP_CLIENT_SECRET (never argv: `ps` shows argv); OP_ACCOUNTS (JSON: name -> claims) adds or replaces
// accounts. The issuer is http://127.0.0.1:PORT; PORT 0 picks a free one. When ready it prints one line:
// `listening http://127.0.0.1:PORT`.
//
// Clients (all: grant_types authorization_code + refresh_token, response_types code, PKCE S256 required):
//   tokengate-test    client_secret_basic (or --auth-method), secret OP_CLIENT_SECRET
//   tokengate-post    client_secret_post, the same secret
//   tokengate-public  none (a public client: PKCE only)
// Each must authenticate at the token endpoint by exactly its registered method (oidc-provider alone
// takes client_secret_basic and client_secret_post from either): see strictClientAuth below.
//
// Test-only admin endpoints (the server listens on 127.0.0.1 only):
//   POST /test/redirect-uris   {"redirect_uris": [...], "post_logout_redirect_uris": [...]}: added to
//                              every client's (exact URIs; no wildcard). Answers the lists now in effect.
//   POST /test/rotate-keys     {"retire": false}: a new RSA signing key; new ID tokens carry its kid. The
//                              old keys stay in the JWKS after it (verification only) unless "retire" is
//                              true. Answers {"kid": new kid, "kids": [kids in the JWKS]}.
//   PUT  /test/accounts/NAME   {claims}: adds or replaces an account (its sub is NAME). Answers 204.
//
// Both POSTs build a new Provider from the same configuration and serve it from then on: the configuration
// of a Provider is fixed once built. Sessions, grants and codes live in oidc-provider's in-memory adapter,
// which is shared by every Provider of this process, and the cookie keys stay the same: nothing in flight
// is lost.

import { generateKeyPair, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs, promisify } from 'node:util';

import Provider from 'oidc-provider';

const generate = promisify(generateKeyPair);

const { values: opts } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.OP_PORT },
    'redirect-uri': { type: 'string', multiple: true, default: words(process.env.OP_REDIRECT_URIS) },
    'post-logout-redirect-uri': {
      type: 'string', multiple: true, default: words(process.env.OP_POST_LOGOUT_REDIRECT_URIS),
    },
    'auth-method': { type: 'string', default: process.env.OP_AUTH_METHOD || 'client_secret_basic' },
  },
});

function words(value) {
  return (value || '').split(/\s+/u).filter(Boolean);
}

if (opts.port === undefined || !/^\d+$/u.test(opts.port)) {
  console.error('usage: node op.js --port PORT (or OP_PORT)');
  process.exit(2);
}

const CLIENT_SECRET = process.env.OP_CLIENT_SECRET || randomBytes(24).toString('base64url');

// name -> claims; each account's sub is its name. bob's address is not verified and he has no groups claim;
// dave's groups claim is a single string. Any other name (the login page takes any name and password) is
// an account with no claim but its sub.
const ACCOUNTS = new Map(Object.entries({
  alice: { email: 'alice@example.test', email_verified: true, name: 'Alice Example', groups: ['gateway-admins'] },
  bob: { email: 'bob@example.test', email_verified: false, name: 'Bob Example' },
  carol: { email: 'carol@example.test', email_verified: true, name: 'Carol Example', groups: ['staff', 'other'] },
  dave: { email: 'dave@example.test', email_verified: true, name: 'Dave Example', groups: 'staff' },
  ...JSON.parse(process.env.OP_ACCOUNTS || '{}'),
}));

// Placeholder so that a client is valid before the tests register their URIs (nothing listens there).
const PLACEHOLDER_URI = 'http://127.0.0.1:9/unused';
const redirectUris = new Set(opts['redirect-uri']);
const postLogoutRedirectUris = new Set(opts['post-logout-redirect-uri']);

const cookieKeys = [randomBytes(32).toString('base64url')];
let signingKeys = [];   // private JWKs, the newest first: oidc-provider signs with the first that fits

async function newSigningKey() {
  const { privateKey } = await generate('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: `k-${randomBytes(9).toString('base64url')}`, use: 'sig', alg: 'RS256' };
}

const escape = (value) => String(value).replace(/[&<>"']/gu, (c) => `&#${c.charCodeAt(0)};`);

// The default pages import a web font from fonts.googleapis.com; these three load nothing from elsewhere.
function page(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${escape(title)}</title></head>
<body><h1>${escape(title)}</h1>${body}</body></html>`;
}

function clients() {
  const common = {
    redirect_uris: redirectUris.size ? [...redirectUris] : [PLACEHOLDER_URI],
    post_logout_redirect_uris: [...postLogoutRedirectUris],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
  };
  const secret = { client_secret: CLIENT_SECRET };
  return [
    { client_id: 'tokengate-test', ...secret, token_endpoint_auth_method: opts['auth-method'], ...common },
    { client_id: 'tokengate-post', ...secret, token_endpoint_auth_method: 'client_secret_post', ...common },
    { client_id: 'tokengate-public', token_endpoint_auth_method: 'none', ...common },
  ];
}

function configuration() {
  return {
    clients: clients(),
    jwks: { keys: signingKeys.map((key) => ({ ...key })) },
    cookies: { keys: cookieKeys },
    pkce: { required: () => true },   // S256 is the only method oidc-provider 9 supports
    responseTypes: ['code'],
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      groups: ['groups'],
    },
    // Scope claims in the ID token of the code flow too (as Google, Entra ID, Keycloak... put them there);
    // oidc-provider's default leaves them to the userinfo endpoint.
    conformIdTokenClaims: false,
    async findAccount(ctx, sub) {   // any other name signs in too, with no claim but its sub
      return {
        accountId: sub,
        async claims() {
          return { ...ACCOUNTS.get(sub), sub };
        },
      };
    },
    // Access tokens as JWTs for one resource server (audience tokengate-api) with the account's groups:
    // what a gateway that trusts this issuer (tokens.trusted_issuers) verifies.
    async extraTokenClaims(ctx, token) {
      const groups = (ACCOUNTS.get(token.accountId) || {}).groups;
      return groups === undefined ? {} : { groups };
    },
    features: {
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:tokengate:api',
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({ scope: 'openid email profile groups', audience: 'tokengate-api',
                                        accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } }),
      },
      devInteractions: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        async logoutSource(ctx, form) {
          ctx.body = page('Sign out', `${form}
<button type="submit" form="op.logoutForm" name="logout" value="yes">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button>`);
        },
        async postLogoutSuccessSource(ctx) {
          ctx.body = page('Signed out', '<p id="signed-out">You are signed out.</p>');
        },
      },
    },
    async renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Error', Object.entries(out)
        .map(([key, value]) => `<pre id="${escape(key)}">${escape(value)}</pre>`).join(''));
    },
    clientBasedCORS: () => false,
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      IdToken: 3600,
      RefreshToken: 86400,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
    },
  };
}

let issuer;
let handle;

function build() {
  const provider = new Provider(issuer, configuration());
  provider.on('server_error', (ctx, error) => console.error('server_error', error));
  handle = provider.callback();
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) {
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : {};
}

function answer(res, status, body) {
  if (body === undefined) {
    res.writeHead(status).end();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text);
}

const stringList = (value) => Array.isArray(value) && value.every((item) => typeof item === 'string');

async function admin(req, res, path) {
  let body;
  try {
    body = await readJson(req);
  } catch {
    answer(res, 400, { error: 'body is not JSON' });
    return;
  }
  if (req.method === 'POST' && path === '/test/redirect-uris') {
    const add = {
      redirect_uris: body.redirect_uris ?? [],
      post_logout_redirect_uris: body.post_logout_redirect_uris ?? [],
    };
    if (!stringList(add.redirect_uris) || !stringList(add.post_logout_redirect_uris)) {
      answer(res, 400, { error: 'redirect_uris and post_logout_redirect_uris are lists of strings' });
      return;
    }
    if (add.redirect_uris.every((uri) => redirectUris.has(uri))
        && add.post_logout_redirect_uris.every((uri) => postLogoutRedirectUris.has(uri))) {
      answer(res, 200, { redirect_uris: [...redirectUris], post_logout_redirect_uris: [...postLogoutRedirectUris] });
      return;
    }
    const before = [new Set(redirectUris), new Set(postLogoutRedirectUris)];
    add.redirect_uris.forEach((uri) => redirectUris.add(uri));
    add.post_logout_redirect_uris.forEach((uri) => postLogoutRedirectUris.add(uri));
    try {
      build();
    } catch (error) {   // an invalid URI: oidc-provider refuses the client; keep the lists that worked
      redirectUris.clear();
      postLogoutRedirectUris.clear();
      before[0].forEach((uri) => redirectUris.add(uri));
      before[1].forEach((uri) => postLogoutRedirectUris.add(uri));
      build();
      answer(res, 400, { error: String(error.message) });
      return;
    }
    answer(res, 200, { redirect_uris: [...redirectUris], post_logout_redirect_uris: [...postLogoutRedirectUris] });
  } else if (req.method === 'POST' && path === '/test/rotate-keys') {
    const key = await newSigningKey();
    signingKeys = body.retire ? [key] : [key, ...signingKeys];
    build();
    console.log(`signing key rotated: ${key.kid}`);
    answer(res, 200, { kid: key.kid, kids: signingKeys.map((k) => k.kid) });
  } else if (req.method === 'PUT' && path.startsWith('/test/accounts/') && path.length > '/test/accounts/'.length) {
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      answer(res, 400, { error: 'the claims are a JSON object' });
      return;
    }
    ACCOUNTS.set(decodeURIComponent(path.slice('/test/accounts/'.length)), body);
    answer(res, 204);
  } else {
    answer(res, 404, { error: 'no such test endpoint' });
  }
}

const server = createServer((req, res) => {
  const path = new URL(req.url, 'http://op.invalid').pathname;
  res.on('finish', () => console.log(`${req.method} ${path} ${res.statusCode}`));   // no query: codes, states
  if (path.startsWith('/test/')) {
    admin(req, res, path).catch((error) => {
      console.error('admin endpoint failed', error);
      if (!res.headersSent) answer(res, 500, { error: 'admin endpoint failed' });
    });
    return;
  }
  if (handle === undefined) {   // not listening for long enough to know its port yet
    answer(res, 503, { error: 'starting' });
    return;
  }
  if (req.method === 'POST' && path === '/token') {
    strictClientAuth(req, res).catch((error) => {
      console.error('token endpoint check failed', error);
      if (!res.headersSent) answer(res, 500, { error: 'server_error' });
    });
    return;
  }
  handle(req, res);
});

// oidc-provider accepts client_secret_basic and client_secret_post from a client registered with either;
// here a client must use the one method it is registered with (as the gateway's client_auth promises),
// else 401 invalid_client, as oidc-provider answers a wrong secret. The body read here is handed on as
// req.body, which oidc-provider reads in place of the stream (it says so once, on its first use).
async function strictClientAuth(req, res) {
  const chunks = [];
  for await (const chunk of req) {
    chunks.push(chunk);
  }
  const raw = Buffer.concat(chunks);
  const form = new URLSearchParams(raw.toString('utf8'));
  const header = req.headers.authorization ?? '';
  let clientId = form.get('client_id');
  if (/^basic /iu.test(header)) {
    const basic = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
    try {
      clientId = decodeURIComponent(basic.slice(0, basic.indexOf(':')).replace(/\+/gu, ' '));
    } catch {
      clientId = undefined;   // oidc-provider answers the malformed header itself
    }
  }
  const client = clients().find((c) => c.client_id === clientId);
  const used = header ? 'client_secret_basic' : (form.has('client_secret') ? 'client_secret_post' : 'none');
  const registered = client?.token_endpoint_auth_method;
  if (['client_secret_basic', 'client_secret_post'].includes(registered) && used !== registered) {
    console.log(`token request of ${clientId} by ${used}, registered with ${registered}: refused`);
    answer(res, 401, { error: 'invalid_client', error_description: 'client authentication failed' });
    return;
  }
  req.body = raw;
  handle(req, res);
}

signingKeys = [await newSigningKey()];
server.listen(Number(opts.port), '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  build();
  console.log(`listening ${issuer}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
