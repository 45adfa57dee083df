#!/usr/bin/env python3
"""Which code of a running agent is resident (mapped in its page tables), by crate: where its
PSS at rest goes (docs/benchmarks.md, "Idle footprint"). Needs root (pagemap) and the same
build unstripped, for its symbols:

    cargo build --release -p respawn-agent --config 'profile.release.strip=false'
    target/release/respawn-agent --config agent.toml &   # with 50 `sleep` processes, say
    python3 scripts/resident-code.py $! target/release/respawn-agent

A page shared by several crates' functions is split between them by bytes."""
import sys, struct, subprocess, re, collections, os
pid=int(sys.argv[1]); binary=sys.argv[2]
exe=os.readlink(f'/proc/{pid}/exe')
maps=[]
for line in open(f'/proc/{pid}/maps'):
    parts=line.split()
    if len(parts)>=6 and parts[5]==exe:
        lo,hi=[int(x,16) for x in parts[0].split('-')]
        maps.append((lo,hi,parts[1],int(parts[2],16)))
PAGE=4096
present=[]  # file offsets of present pages, with perms
with open(f'/proc/{pid}/pagemap','rb') as pm:
    for lo,hi,perm,off in maps:
        n=(hi-lo)//PAGE
        pm.seek(lo//PAGE*8)
        data=pm.read(n*8)
        for i in range(n):
            (e,)=struct.unpack_from('<Q',data,i*8)
            if e>>63:
                present.append((perm,off+i*PAGE))
byperm=collections.Counter(p for p,_ in present)
print('present pages by mapping perms:',{k:v*4 for k,v in byperm.items()},'KiB')
# ELF: map file offsets to vaddrs via program headers
out=subprocess.run(['readelf','-lW',binary],capture_output=True,text=True).stdout
loads=[]
for l in out.splitlines():
    l=l.split()
    if l and l[0]=='LOAD':
        off,va,pa,fs,ms=[int(x,16) for x in l[1:6]]
        loads.append((off,va,fs,l[6]))
def va_of(off):
    for o,va,fs,fl in loads:
        if o<=off<o+fs: return va+(off-o)
    return None
syms=[]
out=subprocess.run(['nm','-C','--defined-only','-S','-n',binary],capture_output=True,text=True).stdout
for l in out.splitlines():
    p=l.split(None,3)
    if len(p)==4 and p[2] in 'tTwW':
        syms.append((int(p[0],16),int(p[1],16),p[3]))
def crate(name):
    name=re.sub(r'^<','',name)
    m=re.match(r'(?:_<)?([A-Za-z_][A-Za-z0-9_]*)::',name)
    if not m:
        return 'other:'+name[:30]
    c=m.group(1)
    if c in ('core','alloc','std'): 
        # generic instantiations: attribute to the first non-std crate named inside
        inner=re.findall(r'\b([a-z_][a-z0-9_]*)::',name)
        for x in inner:
            if x not in ('core','alloc','std'): return c+'<'+x+'>'
    return c
import bisect
addrs=[s[0] for s in syms]
percrate=collections.Counter()
text_pages=0
for perm,off in present:
    if 'x' not in perm: continue
    va=va_of(off)
    if va is None: continue
    text_pages+=1
    # symbols overlapping [va, va+PAGE)
    i=bisect.bisect_right(addrs,va)-1
    i=max(i,0)
    cov=collections.Counter()
    while i<len(syms) and syms[i][0]<va+PAGE:
        a,sz,n=syms[i]
        ov=min(a+sz,va+PAGE)-max(a,va)
        if ov>0: cov[crate(n)]+=ov
        i+=1
    tot=sum(cov.values()) or 1
    for c,v in cov.items(): percrate[c]+=PAGE*v/tot
print('resident text KiB:',text_pages*4)
def top(counter,n=40):
    for c,v in counter.most_common(n): print(f'{v/1024:8.1f} KiB  {c}')
top(percrate)
# whole-binary text size by crate
size=collections.Counter()
for a,sz,n in syms: size[crate(n)]+=sz
print('--- text size by crate (KiB)')
top(size,25)
