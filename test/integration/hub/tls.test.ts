import * as fs from 'node:fs';
import * as https from 'node:https';
import * as path from 'node:path';
import { testLogger } from '../../../common/log';
import { createHub, Hub } from '../../../hub';
import { FakeAgent, makeHello } from '../../helpers/fake-agent';
import { useTmpDir } from '../../helpers/tmpdir';
import { selfSignedCert } from '../../helpers/tls';
import { describeWithTools } from '../../helpers/tools';

const tmp = useTmpDir('hub-tls-');

describeWithTools(['openssl'])('hub over TLS', () => {
  let hub: Hub | null = null;
  afterEach(async () => {
    await hub?.stop();
    hub = null;
  });

  it('serves wss:// replication and https:// status with the given certificate', async () => {
    const { cert, key } = selfSignedCert(tmp.path);
    hub = createHub({
      listen: { host: '127.0.0.1', port: 0 },
      dataDir: path.join(tmp.path, 'data'),
      nbdListen: null,
      tls: { cert, key },
      logger: testLogger('hub-tls'),
    });
    const { httpPort } = await hub.start();
    const ca = fs.readFileSync(cert);
    const agent = await FakeAgent.connect(`wss://127.0.0.1:${httpPort}/v1/replicate`, { ca });
    expect((await agent.hello(makeHello())).welcome?.syncMode).toBe('full');
    const body = await new Promise<string>((resolve, reject) => {
      https
        .get({ host: '127.0.0.1', port: httpPort, path: '/v1/status', ca }, (res) => {
          let text = '';
          res.on('data', (c) => (text += c));
          res.on('end', () => resolve(text));
        })
        .on('error', reject);
    });
    expect(JSON.parse(body).volumes[0].name).toBe('vol1');
    await agent.close();
  });
});
