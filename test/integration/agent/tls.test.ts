/**
 * The agent streams to a hub over wss:// when it trusts the hub's certificate
 * (caFile), and never connects when it does not.
 */
import * as path from 'node:path';
import { Agent, createAgent } from '../../../agent';
import { testLogger } from '../../../common/log';
import { createHub, Hub } from '../../../hub';
import { useTmpDir } from '../../helpers/tmpdir';
import { selfSignedCert } from '../../helpers/tls';
import { describeWithTools } from '../../helpers/tools';
import { sleep, waitFor } from '../../helpers/wait-for';

const tmp = useTmpDir('agent-tls-');
const MiB = 1024 * 1024;

describeWithTools(['openssl'])('agent over TLS', () => {
  let hub: Hub | null = null;
  let agent: Agent | null = null;
  afterEach(async () => {
    await agent?.stop();
    await hub?.stop();
    agent = null;
    hub = null;
  });

  async function startHub(): Promise<{ port: number; cert: string }> {
    const { cert, key } = selfSignedCert(tmp.path);
    hub = createHub({
      listen: { host: '127.0.0.1', port: 0 },
      dataDir: path.join(tmp.path, 'hub'),
      nbdListen: null,
      nvmeListen: null,
      tls: { cert, key },
      logger: testLogger('hub'),
    });
    const { httpPort } = await hub.start();
    return { port: httpPort, cert };
  }

  function startAgent(port: number, caFile?: string): Promise<unknown> {
    agent = createAgent({
      stateDir: path.join(tmp.path, 'agent'),
      volumes: [{ name: 'v1', path: path.join(tmp.path, 'v1.img'), size: 4 * MiB }],
      nvmeListen: null,
      nbdListen: null,
      hub: {
        url: `wss://127.0.0.1:${port}/v1/replicate`,
        caFile,
        ackMode: 'async',
        queueBytes: 16 * MiB,
        resyncRate: 0,
        regionSize: 65536,
        reconnectBaseMs: 50,
        reconnectMaxMs: 200,
        statusIntervalMs: 100,
      },
      logger: testLogger('agent'),
    });
    return agent.start();
  }

  it('replicates over wss:// with the hub certificate as CA', async () => {
    const { port, cert } = await startHub();
    await startAgent(port, cert);
    await agent!.device('v1').write(MiB, Buffer.alloc(65536, 0x5a));
    await waitFor(() => hub!.status().volumes[0]?.synced === true, { timeoutMs: 15_000, what: 'synced over TLS' });
  });

  it('does not connect to a hub whose certificate it does not trust', async () => {
    const { port } = await startHub();
    await startAgent(port);
    await sleep(1000);
    expect(hub!.status().volumes).toEqual([]);
    expect(agent!.status().volumes[0]!.replication!.state).not.toBe('streaming');
    expect(agent!.status().volumes[0]!.replication!.lastError).toMatch(/certificate/i);
  });
});
