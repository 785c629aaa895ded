using Microsoft.AspNetCore.Http.HttpResults;
using SandboxKit.Contracts;
using SandboxKit.Server.Auth;
using SandboxKit.Server.Network;
using SandboxKit.Server.Sessions;
using Yarp.ReverseProxy.Forwarder;

namespace SandboxKit.Server.Api;

/// <summary>A session's egress policy and log, its exposed ports, and the preview URLs they serve.</summary>
internal static class NetworkApi
{
    public static IEndpointRouteBuilder MapNetworkApi(this IEndpointRouteBuilder app)
    {
        var group = app.MapGroup("/v1/sessions/{id}").WithTags("Network").RequireTenant();
        group.MapPatch("/egress", UpdateEgressAsync)
            .WithSummary("Replace the session's egress policy (an empty allow list: no network); connections it no longer allows are closed.")
            .ProducesStandardProblems();
        group.MapGet("/egress/log", EgressLogOf).WithSummary("The gateway's recent decisions for the session (newest first) and its counters.").ProducesStandardProblems();
        group.MapPost("/ports", Expose).WithSummary("Expose a port inside the sandbox as a preview URL (HTTP and WebSocket; no network needed in the sandbox).").ProducesStandardProblems();
        group.MapGet("/ports", ListPorts).WithSummary("The session's exposed ports.").ProducesStandardProblems();
        group.MapDelete("/ports/{port:int}", Revoke).WithSummary("Revoke a preview URL.").ProducesStandardProblems();

        // The token in the URL (or the cookie it sets) is the authorisation: no API key, so a browser can open it.
        app.Map(PreviewService.PathPrefix + "/{sessionId}/{port:int}/{**rest}", ForwardPreviewAsync).WithTags("Network").ExcludeFromDescription();
        return app;
    }

    private static async Task<Ok<SessionInfo>> UpdateEgressAsync(HttpContext http, SessionRegistry sessions, SessionLifecycle lifecycle, EgressService egress, string id,
        EgressPolicyRequest? request, CancellationToken cancellationToken)
    {
        var session = sessions.Get(http.GetTenant(), id);
        await lifecycle.UseSupervisorAsync(session, connection => egress.UpdateAsync(session, connection, request, cancellationToken), cancellationToken);
        return TypedResults.Ok(session.ToInfo());
    }

    private static Ok<EgressLog> EgressLogOf(HttpContext http, SessionRegistry sessions, EgressService egress, string id, int? limit) =>
        TypedResults.Ok(egress.Log(sessions.Get(http.GetTenant(), id), limit ?? 100));

    private static Created<ExposedPort> Expose(HttpContext http, SessionRegistry sessions, PreviewService previews, string id, ExposePortRequest request)
    {
        var exposed = previews.Expose(sessions.Get(http.GetTenant(), id), request, BaseUrl(http));
        return TypedResults.Created($"/v1/sessions/{id}/ports/{exposed.Port}", exposed);
    }

    private static Ok<ExposedPortList> ListPorts(HttpContext http, SessionRegistry sessions, PreviewService previews, string id) =>
        TypedResults.Ok(new ExposedPortList { Ports = previews.List(sessions.Get(http.GetTenant(), id), BaseUrl(http)) });

    private static NoContent Revoke(HttpContext http, SessionRegistry sessions, PreviewService previews, string id, int port)
    {
        previews.Revoke(sessions.Get(http.GetTenant(), id), port);
        return TypedResults.NoContent();
    }

    private static Task ForwardPreviewAsync(HttpContext http, PreviewService previews, IHttpForwarder forwarder, string sessionId, int port, string? rest)
    {
        if (string.IsNullOrEmpty(rest) && !(http.Request.Path.Value ?? "").EndsWith('/'))
        {
            // The app's relative links resolve against the preview's root only with the slash.
            http.Response.Redirect($"{PreviewService.PathPrefix}/{sessionId}/{port}/{http.Request.QueryString}");
            return Task.CompletedTask;
        }
        return previews.ForwardAsync(http, forwarder, sessionId, port, rest ?? "");
    }

    /// <summary>Where this server is reached, for URLs it hands out: the configured public URL, else the request's own.</summary>
    private static string BaseUrl(HttpContext http) =>
        http.RequestServices.GetRequiredService<Microsoft.Extensions.Options.IOptions<SandboxOptions>>().Value.PublicBaseUrl is { Length: > 0 } configured
            ? configured
            : $"{http.Request.Scheme}://{http.Request.Host}";
}
