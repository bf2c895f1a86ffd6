// Node status for the console: version, roles and readiness, refreshed every few seconds.
async function refresh() {
  try {
    const live = await (await fetch('/health/live')).json();
    document.getElementById('version').textContent = 'v' + live.version;
    const r = await fetch('/health/ready');
    const ready = await r.json();
    const h = document.getElementById('health');
    h.textContent = ready.status;
    h.className = r.ok ? 'ok' : 'bad';
    document.getElementById('roles').textContent = ready.roles.join(', ');
    document.getElementById('failing').textContent = ready.failing
      .map((f) => f.component + ': ' + f.reason).join('; ');
  } catch (e) {
    document.getElementById('health').textContent = 'unreachable';
  }
}
refresh();
setInterval(refresh, 5000);
