// idstack console: node status, tenants, live activity and a guided issue → accept → verify demo.
// Plain JS, no dependencies, no network beyond this node. The admin token lives in sessionStorage.
const $ = (id) => document.getElementById(id);
const token = () => sessionStorage.getItem('idstack-admin-token') || '';
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));

async function api(path, opts = {}, auth = token()) {
  const headers = { ...(opts.body ? { 'Content-Type': 'application/json' } : {}), ...(auth ? { Authorization: `Bearer ${auth}` } : {}) };
  const r = await fetch(path, { ...opts, headers });
  const text = await r.text();
  let body; try { body = JSON.parse(text); } catch { body = text; }
  if (!r.ok) throw Object.assign(new Error(body && body.detail ? `${body.code}: ${body.detail}` : `HTTP ${r.status}`), { status: r.status });
  return body;
}

async function refreshStatus() {
  try {
    const live = await api('/health/live', {}, '');
    $('version').textContent = 'v' + live.version;
    const r = await fetch('/health/ready');
    const ready = await r.json();
    $('health').textContent = ready.status;
    $('health').className = 'pill ' + (r.ok ? 'ok' : 'bad');
    $('roles').textContent = ready.roles.join(', ');
    $('failing').textContent = ready.failing.map((f) => f.component + ': ' + f.reason).join('; ');
  } catch { $('health').textContent = 'unreachable'; $('health').className = 'pill bad'; }
  if (!token()) return;
  try {
    const sys = await api('/api/system');
    $('public-url').textContent = sys.public_url;
    $('features').textContent = sys.features.join(', ');
    $('store-size').textContent = `${(sys.store_size_bytes / 1048576).toFixed(1)} MiB on disk`;
    $('token-state').textContent = 'token accepted';
  } catch (e) { $('token-state').textContent = e.message; }
  refreshCluster();
}

// Cluster members as this node sees them (GET /api/cluster; absent in builds without `cluster`).
async function refreshCluster() {
  const table = $('cluster-members');
  try {
    const c = await api('/api/cluster');
    if (!c.enabled) { $('cluster-state').textContent = 'single node'; table.hidden = true; return; }
    const alive = c.members.filter((m) => m.state === 'alive').length;
    $('cluster-state').textContent = `cluster ${c.cluster_id}: this node ${c.node_id}${c.leader ? ' (leader)' : ''}, ${alive} of ${c.members.length} members alive`;
    table.tBodies[0].innerHTML = c.members.map((m) => `<tr><td>${esc(m.node_id)}</td><td class="${m.state === 'alive' ? 'ok' : 'bad'}">${esc(m.state)}</td><td>${m.ready}</td><td>${m.caught_up}</td><td>${esc(m.roles.join(', '))}</td><td><code>${esc(m.rpc_addr)}</code></td><td>${m.sync && m.sync.last_sync_ms ? new Date(m.sync.last_sync_ms).toLocaleTimeString() : '—'}</td></tr>`).join('');
    table.hidden = false;
  } catch (e) {
    // 404: a build without the cluster feature; anything else is a real error worth showing.
    $('cluster-state').textContent = e.status === 404 ? 'single node' : `cluster status unavailable: ${e.message}`;
    table.hidden = true;
  }
}

async function refreshTenants() {
  if (!token()) return;
  try {
    const issuers = await api('/api/issuers');
    $('issuers').innerHTML = '<h3>Issuers</h3>' + issuers.map((i) => `<p><b>${esc(i.id)}</b> ${esc(i.display_name)} — <code>${esc(i.did)}</code><br>
      <a href="/.well-known/openid-credential-issuer/issuers/${esc(i.id)}">issuer metadata</a> ·
      <a href="/.well-known/oauth-authorization-server/issuers/${esc(i.id)}">AS metadata</a> ·
      ${Object.keys(i.credential_configurations).map(esc).join(', ')}</p>`).join('');
    const def = issuers.find((i) => i.id === 'default');
    if (def && !$('demo-config').options.length) {
      demo.configs = def.credential_configurations;
      for (const id of Object.keys(def.credential_configurations)) $('demo-config').add(new Option(id, id));
      demoClaims();
    }
    const verifiers = await api('/api/verifiers');
    $('verifiers').innerHTML = '<h3>Verifiers</h3>' + verifiers.map((v) => `<p><b>${esc(v.id)}</b> ${esc(v.display_name)} ${v.did ? '— <code>' + esc(v.did) + '</code>' : ''}</p>`).join('');
  } catch (e) { $('issuers').textContent = e.message; }
}

async function refreshActivity() {
  if (!token()) return;
  try {
    const offers = await api('/api/issuers/default/offers');
    $('offers').tBodies[0].innerHTML = offers.slice(-10).reverse().map((o) => `<tr><td>${esc(o.id)}</td><td>${esc(o.state)}</td><td>${esc(o.credential_configuration_ids.join(', '))}</td></tr>`).join('');
    const sessions = await api('/api/verifiers/default/sessions');
    $('sessions').tBodies[0].innerHTML = sessions.slice(-10).reverse().map((s) => `<tr><td>${esc(s.id)}</td><td>${esc(s.state)}</td><td>${s.verified}</td></tr>`).join('');
  } catch { /* shown elsewhere */ }
}

// The QR code is fetched by POST and shown from a blob: URL, so what it encodes (an offer's
// pre-authorized code, say) never appears in a URL a proxy would log.
let qrCount = 0;
function qr(data) {
  const id = `qr-${++qrCount}`;
  fetch('/console/qr.svg', { method: 'POST', headers: { 'Content-Type': 'text/plain' }, body: data })
    .then((r) => (r.ok ? r.blob() : null))
    .then((blob) => {
      const img = document.getElementById(id);
      if (img && blob) {
        const url = URL.createObjectURL(blob);
        // the image holds its own copy once decoded: the blob is not kept for the page's life
        img.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
        img.addEventListener("error", () => URL.revokeObjectURL(url), { once: true });
        img.src = url;
      }
    })
    .catch(() => { /* no QR code: the text is shown beside it */ });
  return `<img class="qr" id="${id}" alt="QR code" width="240" height="240">`;
}

// ---- guided demo ----------------------------------------------------------------------------
const demo = { configs: {}, offer: null, wallet: null, walletToken: null, request: null, session: null };

// Sample values for the mdoc data elements the built-in mDL and PID configurations ask for.
function mdocSample(name) {
  const today = new Date().toISOString().slice(0, 10);
  const inFiveYears = `${Number(today.slice(0, 4)) + 5}${today.slice(4)}`;
  const samples = {
    family_name: 'Demo', given_name: $('demo-given').value, birth_date: '1990-01-01', issue_date: today,
    issuance_date: today, expiry_date: inFiveYears, issuing_country: 'UT', issuing_authority: 'idstack sandbox',
    document_number: 'D-0001', un_distinguishing_sign: 'UT', age_over_18: true, nationality: ['UT'],
    driving_privileges: [{ vehicle_category_code: 'B', issue_date: today }],
  };
  return samples[name];
}

// The selected configuration: its format, and for mdocs its doctype and namespace.
function demoConfig() {
  const id = $('demo-config').value;
  const c = demo.configs[id] ?? {};
  const namespace = c.namespace ?? (c.doctype === 'org.iso.18013.5.1.mDL' ? 'org.iso.18013.5.1' : c.doctype);
  return { id, format: c.format, doctype: c.doctype, namespace, claims: (c.claims ?? []).map((x) => x.name) };
}

// The claims a verifier may ask for: those of the selected configuration.
function demoClaims() {
  const { claims } = demoConfig();
  const select = $('demo-claim');
  const keep = select.value;
  select.innerHTML = '';
  for (const name of claims) select.add(new Option(name, name));
  if (claims.includes(keep)) select.value = keep;
}
$('demo-config').addEventListener('change', demoClaims);

async function demoWallet() {
  if (demo.walletToken) return;
  const email = `demo-${crypto.randomUUID()}@console.invalid`;
  const password = crypto.randomUUID();
  await api('/wallet/auth/register', { method: 'POST', body: JSON.stringify({ email, password }) }, '');
  const login = await api('/wallet/auth/login', { method: 'POST', body: JSON.stringify({ email, password }) }, '');
  demo.walletToken = login.token;
  const w = await api('/wallet/wallets', { method: 'POST', body: JSON.stringify({ name: 'console demo' }) }, demo.walletToken);
  demo.wallet = w.id;
}

function step(button, out, fn) {
  $(button).addEventListener('click', async () => {
    $(button).disabled = true;
    $(out).textContent = 'working…';
    try { await fn(); } catch (e) { $(out).innerHTML = `<span class="bad">${esc(e.message)}</span>`; $(button).disabled = false; }
  });
}

step('mediator-invite', 'mediator-invitation', async () => {
  const inv = await api('/api/mediator/invitation');
  $('mediator-invitation').innerHTML = `${qr(inv.invitation_url)}<br><code id="mediator-invitation-url">${esc(inv.invitation_url)}</code>`;
  $('mediator-invite').disabled = false;
});

step('demo-offer', 'offer-out', async () => {
  const config = demoConfig();
  const claims = config.format === 'mso_mdoc'
    ? Object.fromEntries(config.claims.map((n) => [n, mdocSample(n)]).filter(([, v]) => v !== undefined))
    : { given_name: $('demo-given').value, family_name: 'Demo', email: $('demo-email').value };
  const o = await api('/api/issuers/default/offers', { method: 'POST', body: JSON.stringify({
    credential_configuration_ids: [config.id], claims }) });
  demo.offer = o;
  $('offer-out').innerHTML = `${qr(o.offer_uri)}<br><a id="offer-link" href="${esc(o.offer_uri)}">${esc(o.offer_uri)}</a>`;
  $('demo-offer').disabled = false;
  $('demo-accept').disabled = false;
});

step('demo-accept', 'accept-out', async () => {
  await demoWallet();
  const got = await api(`/wallet/wallets/${demo.wallet}/exchange/accept-offer`, { method: 'POST', body: JSON.stringify({ offer: demo.offer.offer_uri }) }, demo.walletToken);
  $('accept-out').innerHTML = `Stored: ${got.map((c) => `<b>${esc(c.format)}</b> from <code>${esc(c.issuer)}</code>`).join(', ')}`;
  $('demo-request').disabled = false;
});

step('demo-request', 'request-out', async () => {
  const claim = $('demo-claim').value;
  const { format, doctype, namespace } = demoConfig();
  const query = format === 'mso_mdoc'
    ? { id: 'demo', format, meta: { doctype_value: doctype }, claims: [{ path: [namespace, claim] }] }
    : { id: 'demo', format, meta: {}, claims: [{ path: format === 'dc+sd-jwt' ? [claim] : ['credentialSubject', claim] }] };
  const s = await api('/api/verifiers/default/sessions', { method: 'POST', body: JSON.stringify({ dcql_query: { credentials: [query] } }) });
  demo.session = s;
  $('request-out').innerHTML = `${qr(s.authorization_request)}<br><code>${esc(s.authorization_request)}</code>`;
  $('demo-request').disabled = false;
  $('demo-present').disabled = false;
});

step('demo-present', 'present-out', async () => {
  await api(`/wallet/wallets/${demo.wallet}/exchange/present`, { method: 'POST', body: JSON.stringify({ request: demo.session.authorization_request }) }, demo.walletToken);
  $('present-out').textContent = 'Presented.';
  // the result, as the relying party sees it (SSE would do too; one read suffices here)
  const r = await api(`/api/verifiers/default/sessions/${demo.session.id}`);
  const creds = r.credentials.map((c) => `<div class="claims"><b>${esc(c.format)}</b> from <code>${esc(c.issuer)}</code><pre id="disclosed">${esc(JSON.stringify(c.claims, null, 2))}</pre></div>`).join('');
  $('result-out').innerHTML = `<p id="verdict" class="${r.verified ? 'ok' : 'bad'}">${r.verified ? 'Verified' : 'Not verified'} (${esc(r.state)})</p>` +
    r.policies.map((p) => `${p.passed ? '✔' : '✘'} ${esc(p.name)}${p.reason ? ': ' + esc(p.reason) : ''}`).join('<br>') + creds;
});

$('save-token').addEventListener('click', () => {
  sessionStorage.setItem('idstack-admin-token', $('admin-token').value.trim());
  $('admin-token').value = '';
  refreshAll();
});

async function refreshMediator() {
  if (!token()) return;
  try {
    const m = await api('/api/mediator/stats');
    $('mediator-did').textContent = m.routing_key;
    $('mediator-connections').textContent = `${m.connections} (${m.mediations_granted} mediated, ${m.registered_keys} keys)`;
    $('mediator-live').textContent = `${m.live_sockets} live of ${m.open_sockets} open`;
    $('mediator-queued').textContent = String(m.queued_messages);
    $('mediator-counters').textContent = `${m.forwarded_total} / ${m.delivered_total} / ${m.acknowledged_total}`;
  } catch (e) { $('mediator-did').textContent = e.message.includes('route_not_found') ? 'mediator role not running' : e.message; }
}

function refreshAll() { refreshStatus(); refreshTenants(); refreshActivity(); refreshMediator(); }
refreshAll();
setInterval(refreshAll, 5000);
