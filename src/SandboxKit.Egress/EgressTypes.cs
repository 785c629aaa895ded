using System.Net;
using SandboxKit.Egress.Decisions;
using SandboxKit.Egress.Dns;

namespace SandboxKit.Egress;

/// <summary>Where the sandbox tried to connect, as the supervisor caught it.</summary>
/// <param name="Dialed">The address and port the sandbox dialed (a synthetic address, an IP literal, or the gateway as proxy).</param>
/// <param name="NameHint">
/// The name the supervisor associates with a synthetic address (from the mapping it kept of an earlier DNS answer).
/// Used only for a synthetic address this server has no mapping of (after a restart); never trusted further than that.
/// </param>
internal sealed record EgressTarget(IPEndPoint Dialed, string? NameHint = null);

/// <summary>The outcome of one relayed connection.</summary>
/// <param name="Decision">The decision recorded for it.</param>
/// <param name="BytesUp">Bytes sent upstream.</param>
/// <param name="BytesDown">Bytes sent to the sandbox.</param>
/// <param name="CloseReason">Why the connection ended.</param>
internal sealed record EgressRelayResult(EgressDecision Decision, long BytesUp, long BytesDown, string CloseReason);

/// <summary>The answer to one DNS query.</summary>
/// <param name="Response">The response bytes, framed like the query; null when the query gets no answer (unparseable).</param>
/// <param name="Decision">The decision recorded for it.</param>
/// <param name="Mapping">For an A answer, the name and synthetic address given (the supervisor keeps a copy).</param>
internal sealed record EgressDnsResult(byte[]? Response, EgressDecision Decision, EgressDnsMapping? Mapping);
