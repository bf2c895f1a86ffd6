// Runs the console's guided demo end to end in headless Chromium and saves a screenshot.
// usage: node demo.mjs --url http://127.0.0.1:PORT --token <admin token> --screenshot out.png [--cluster-node ID] [--mdoc]
// With --cluster-node, the node is in cluster mode and the status panel must list that member.
// With --mdoc, the demo runs a second time with the sandbox mDL (mso_mdoc) in the same wallet.
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const { values } = parseArgs({ options: { url: { type: 'string' }, token: { type: 'string' }, screenshot: { type: 'string', default: 'console-demo.png' }, 'cluster-node': { type: 'string' }, mdoc: { type: 'boolean', default: false } } });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const page = await browser.newPage({ viewport: { width: 1200, height: 2200 } });
const failures = [];
page.on('pageerror', (e) => failures.push(`page error: ${e.message}`));
// The console runs under a strict Content-Security-Policy: a violation is a failure, not a log line.
page.on('console', (m) => { if (m.type() === 'error' && /Content.Security.Policy/i.test(m.text())) failures.push(`CSP violation: ${m.text()}`); });
// (blob: URLs of this origin are the console's own QR codes, fetched from the node by POST)
page.on('request', (r) => { if (!r.url().startsWith(values.url) && !r.url().startsWith('data:') && !r.url().startsWith(`blob:${values.url}/`)) failures.push(`request off the node: ${r.url()}`); });
try {
  await page.goto(values.url + '/');
  await page.waitForSelector('#health.ok', { timeout: 10000 });
  await page.fill('#admin-token', values.token);
  await page.click('#save-token');
  await page.waitForSelector('#demo-config option', { state: 'attached', timeout: 10000 });
  if (page.url().includes(values.token)) failures.push('the admin token appeared in the URL');
  // One pass of the guided demo: offer `config`, accept it, ask for `claim`, present; returns
  // the verdict and the claims the verifier received (for mdocs keyed by namespace).
  async function flow(config, claim, expected, namespace) {
    await page.selectOption('#demo-config', config);
    await page.click('#demo-offer');
    await page.waitForFunction((c) => document.querySelector('#offer-link')?.textContent.includes('offer') && document.querySelector('#demo-accept').disabled === false, config, { timeout: 10000 });
    // the element is attached before its image has decoded: wait for it, do not sample once
    const qrOk = await page.waitForFunction(() => { const img = document.querySelector('#offer-out img.qr'); return img && img.complete && img.naturalWidth > 0; }, null, { timeout: 10000 }).then(() => true, () => false);
    if (!qrOk) failures.push(`${config}: the offer QR code did not render`);
    await page.click('#demo-accept');
    await page.waitForFunction(() => document.querySelector('#accept-out').textContent.includes('Stored'), null, { timeout: 20000 });
    await page.selectOption('#demo-claim', claim);
    await page.click('#demo-request');
    await page.waitForSelector('#request-out img.qr', { timeout: 10000 });
    await page.evaluate(() => { document.querySelector('#result-out').innerHTML = ''; });
    await page.click('#demo-present');
    await page.waitForSelector('#verdict', { timeout: 20000 });
    const verdict = await page.textContent('#verdict');
    const disclosed = JSON.parse(await page.textContent('#disclosed'));
    const shown = namespace ? disclosed[namespace] ?? {} : disclosed;
    if (!verdict.startsWith('Verified')) failures.push(`${config}: verdict: ${verdict}`);
    if (JSON.stringify(shown[claim]) !== JSON.stringify(expected)) failures.push(`${config}: disclosed: ${JSON.stringify(disclosed)}`);
    if (claim !== 'given_name' && 'given_name' in shown) failures.push(`${config}: a claim that was not asked for was disclosed`);
    // the next pass starts from a fresh accept step
    await page.evaluate(() => { document.querySelector('#accept-out').textContent = ''; });
    return { verdict, disclosed };
  }
  const { verdict, disclosed } = await flow('IdentityCredential_dc_sd_jwt', 'email', 'erika@example.org');
  const mdoc = values.mdoc ? await flow('org.iso.18013.5.1.mDL', 'age_over_18', true, 'org.iso.18013.5.1') : undefined;
  // Mediator panel: stats shown, invitation as QR and URL.
  await page.waitForFunction(() => document.querySelector('#mediator-did').textContent.startsWith('did:key:'), null, { timeout: 10000 });
  await page.click('#mediator-invite');
  await page.waitForSelector('#mediator-invitation img.qr', { timeout: 10000 });
  const invUrl = await page.textContent('#mediator-invitation-url');
  if (!invUrl.includes('/didcomm?oob=')) failures.push(`mediator invitation: ${invUrl}`);
  // Status panel: cluster members when clustered, "single node" otherwise.
  const member = values['cluster-node'];
  // The panel refreshes every 5 s: wait (up to 20 s) for the expected content, then report what is shown.
  const expectCluster = (m) => {
    const state = document.querySelector('#cluster-state').textContent;
    if (!m) return state === 'single node';
    const rows = [...document.querySelectorAll('#cluster-members tbody tr')].map((tr) => [...tr.cells].map((c) => c.textContent));
    return state.includes(`this node ${m}`) && rows.some((r) => r[0] === m && r[1] === 'alive');
  };
  const shown = await page.waitForFunction(expectCluster, member, { timeout: 20000 }).then(() => true, () => false);
  if (!shown) {
    const clusterState = await page.textContent('#cluster-state');
    const rows = await page.$$eval('#cluster-members tbody tr', (trs) => trs.map((tr) => [...tr.cells].map((c) => c.textContent)));
    failures.push(`cluster panel: ${clusterState} ${JSON.stringify(rows)}`);
  }
  await page.screenshot({ path: values.screenshot, fullPage: true });
  console.log(JSON.stringify({ ok: failures.length === 0, verdict, disclosed, mdoc, failures, screenshot: values.screenshot }));
} catch (e) {
  await page.screenshot({ path: values.screenshot, fullPage: true }).catch(() => {});
  console.log(JSON.stringify({ ok: false, failures: [...failures, String(e)] }));
} finally {
  await browser.close();
}
