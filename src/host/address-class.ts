/**
 * Which destinations the host relay keeps the enclave away from by default (host.allow_private
 * = false): the parent's own loopback, its VPC and other private networks, link-local (the
 * instance metadata service at 169.254.169.254 / fd00:ec2::254), carrier-grade NAT, multicast
 * and reserved space. IPv4 embedded in IPv6 (mapped, NAT64, 6to4) is judged as the IPv4 it is.
 *
 * Documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) are
 * deliberately public here: they route nowhere on the internet and reach no internal service,
 * and tests use them as stand-ins for public servers.
 */
import { BlockList, isIP } from 'node:net';
import { canonicalIp } from '../egress/name-cache.js';

export type AddressClass =
  | 'public'
  | 'unspecified'
  | 'loopback'
  | 'private'
  | 'link-local'
  | 'unique-local'
  | 'cgnat'
  | 'multicast'
  | 'reserved';

const V4: Array<[string, number, Exclude<AddressClass, 'public'>]> = [
  ['0.0.0.0', 8, 'unspecified'],
  ['10.0.0.0', 8, 'private'],
  ['100.64.0.0', 10, 'cgnat'],
  ['127.0.0.0', 8, 'loopback'],
  ['169.254.0.0', 16, 'link-local'],
  ['172.16.0.0', 12, 'private'],
  ['192.0.0.0', 24, 'reserved'],
  ['192.168.0.0', 16, 'private'],
  ['198.18.0.0', 15, 'reserved'],
  ['224.0.0.0', 4, 'multicast'],
  ['240.0.0.0', 4, 'reserved'],
];

const V6: Array<[string, number, Exclude<AddressClass, 'public'>]> = [
  ['::', 128, 'unspecified'],
  ['::1', 128, 'loopback'],
  ['100::', 64, 'reserved'],
  ['fc00::', 7, 'unique-local'],
  ['fe80::', 10, 'link-local'],
  ['fec0::', 10, 'private'],
  ['ff00::', 8, 'multicast'],
];

const lists = new Map<Exclude<AddressClass, 'public'>, BlockList>();
for (const [address, prefix, kind] of V4) list(kind).addSubnet(address, prefix, 'ipv4');
for (const [address, prefix, kind] of V6) list(kind).addSubnet(address, prefix, 'ipv6');

function list(kind: Exclude<AddressClass, 'public'>): BlockList {
  let blockList = lists.get(kind);
  if (!blockList) lists.set(kind, (blockList = new BlockList()));
  return blockList;
}

/** The class of an IP address; throws TypeError for a string that is not one. */
export function classifyAddress(ip: string): AddressClass {
  const canonical = canonicalIp(ip);
  if (canonical === undefined) throw new TypeError(`not an IP address: ${JSON.stringify(ip.slice(0, 64))}`);
  const embedded = embeddedIpv4(canonical);
  const address = embedded ?? canonical;
  const family = isIP(address) === 4 ? 'ipv4' : 'ipv6';
  for (const [kind, blockList] of lists) if (blockList.check(address, family)) return kind;
  return 'public';
}

/** Whether the relay may connect to `ip` without host.allow_private. */
export function isPublicAddress(ip: string): boolean {
  return classifyAddress(ip) === 'public';
}

/** The IPv4 address carried by a NAT64 (64:ff9b::/96) or 6to4 (2002::/16) address. */
function embeddedIpv4(ip: string): string | undefined {
  if (isIP(ip) !== 6) return undefined;
  const groups = expand(ip);
  if (groups[0] === 0x64 && groups[1] === 0xff9b && groups.slice(2, 6).every((g) => g === 0))
    return v4(groups[6]!, groups[7]!);
  if (groups[0] === 0x2002) return v4(groups[1]!, groups[2]!);
  return undefined;
}

function v4(high: number, low: number): string {
  return [high >> 8, high & 0xff, low >> 8, low & 0xff].join('.');
}

function expand(ip: string): number[] {
  const text = ip.replace(
    /(\d+)\.(\d+)\.(\d+)\.(\d+)$/,
    (_m, a, b, c, d) => `${((+a << 8) | +b).toString(16)}:${((+c << 8) | +d).toString(16)}`,
  );
  const [head, tail] = text.split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const middle = text.includes('::') ? Array<string>(8 - left.length - right.length).fill('0') : [];
  return [...left, ...middle, ...right].map((group) => parseInt(group, 16));
}
