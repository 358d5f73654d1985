##! Blocks what Zeek finds bad through the iSDF agent on the same router.
##!
##! The 2013 iSDF script forked `iptables` and scheduled an `at` job to
##! remove the rule (minute granularity, lost on a crash). Here Zeek asks the
##! agent, which enforces the block as a kernel set element with its own
##! timeout (it ends on time even if the agent or Zeek dies), keeps it across
##! restarts, reports it to the controller, and bounds how many blocks and how
##! fast a detector may add.
##!
##! Install: copy to your site directory and add `@load isdf-block` to
##! local.zeek. Zeek must run as root (the agent's socket is root-only).
##! Tune `IsdfBlock::notes` and `IsdfBlock::duration` below or with `redef`.

@load base/frameworks/notice
@load base/utils/exec
@load policy/misc/scan
@load policy/protocols/ssh/detect-bruteforcing

module IsdfBlock;

export {
	## The agent command line tool.
	const agent = "/usr/sbin/isdf-agent" &redef;
	## How long a block lasts (the agent accepts 1 s to 30 days).
	const duration = "10m" &redef;
	## The notices that block their source.
	const notes: set[Notice::Type] = {
		Scan::Address_Scan,
		Scan::Port_Scan,
		SSH::Password_Guessing,
	} &redef;
	## Sources never blocked (the LAN gateway, monitoring hosts...).
	const never_block: set[subnet] = { 127.0.0.0/8, [::1]/128 } &redef;
}

# Zeek fires a notice many times for one source: ask once per block period.
global asked: set[addr] &create_expire = 10 min;

function block_source(src: addr, why: string)
	{
	if ( src in asked || src in never_block )
		return;
	add asked[src];
	# Everything from the source, any protocol and port: `any` for the
	# rest of the five-tuple. The reason is shown to the operator.
	local cmd = Exec::Command($cmd = fmt("%s block any %s any any any --for %s --reason %s",
		agent, src, duration, safe_shell_quote(fmt("zeek: %s", why))));
	when [cmd, src] ( local r = Exec::run(cmd) )
		{
		if ( r$exit_code != 0 )
			Reporter::warning(fmt("isdf-agent refused to block %s: %s", src,
				r?$stderr ? join_string_vec(r$stderr, " ") : "no message"));
		}
	}

hook Notice::policy(n: Notice::Info)
	{
	if ( n$note in notes && n?$src )
		block_source(n$src, fmt("%s", n$note));
	}
