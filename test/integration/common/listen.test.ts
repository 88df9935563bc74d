import { NbdServer } from '../../../common/nbd/server';
import { NvmeTcpTarget } from '../../../common/nvme-tcp/target';

describe('front-end listeners', () => {
  test('a port in use is a clear E_IO for both front ends, and port 0 binds a free port', async () => {
    const nbd = new NbdServer();
    const nvme = new NvmeTcpTarget();
    const bound = await nbd.listen('127.0.0.1', 0);
    expect(bound.port).toBeGreaterThan(0);
    expect(nbd.address()).toEqual(bound);
    await expect(nvme.listen('127.0.0.1', bound.port)).rejects.toMatchObject({
      code: 'E_IO',
      message: expect.stringMatching(new RegExp(`cannot listen on 127\\.0\\.0\\.1:${bound.port}: .*EADDRINUSE`)),
    });
    expect(nvme.address()).toBeNull();
    const other = await nvme.listen('127.0.0.1', 0);
    await expect(new NbdServer().listen('127.0.0.1', other.port)).rejects.toMatchObject({ code: 'E_IO' });
    await nvme.close();
    await nbd.close();
  });
});
