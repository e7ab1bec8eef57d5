//! `install`: server-side apply of every object, in order, after the checks that can refuse it.

use std::io::IsTerminal;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};

use crate::cli::{InstallArgs, KubeOptions};
use crate::cluster::{self, explain, explain_for, is_status};

use super::{MANAGER, POPULATOR_NAME, VALIDATOR_CRD_URL};
use super::{objects::*, settings::*, wait::*};

pub(super) fn kube_options(
    kubeconfig: &Option<std::path::PathBuf>,
    context: &Option<String>,
) -> KubeOptions {
    KubeOptions {
        kubeconfig: kubeconfig.clone(),
        context: context.clone(),
        namespace: None,
    }
}

/// What an apply did, as kubectl says it.
pub(super) fn outcome(before: Option<&str>, after: Option<&str>) -> &'static str {
    match before {
        None => "created",
        Some(rv) if Some(rv) == after => "unchanged",
        Some(_) => "configured",
    }
}

/// `install`
pub fn install(args: &InstallArgs, quiet: bool, rt: &tokio::runtime::Runtime) -> Result<()> {
    check_namespace(&args.namespace)?;
    let image = args
        .image
        .clone()
        .unwrap_or_else(volbackup_populator::mover::default_image);
    check_image(&image)?;
    let extra = populator_args(&args.populator)?;
    let objs = objects(&args.namespace, &image, args.pod_security.label(), &extra)?;
    if args.dry_run {
        print!("{}", render(&objs)?);
        return Ok(());
    }
    rt.block_on(async {
        let kube = cluster::connect(&kube_options(&args.kubeconfig, &args.context)).await?;
        install_async(&kube.client, &args.namespace, &objs, quiet).await
    })
}

pub(super) async fn install_async(
    client: &Client,
    ns: &str,
    objs: &[Object],
    quiet: bool,
) -> Result<()> {
    // Everything that can refuse the install is checked before anything is written.
    match client
        .list_api_group_resources("populator.storage.k8s.io/v1beta1")
        .await
    {
        Ok(list) if list.resources.iter().any(|r| r.name == "volumepopulators") => {}
        Ok(_) => bail!(missing_validator_crd()),
        Err(e) if is_status(&e, 404) => bail!(missing_validator_crd()),
        Err(e) => {
            return Err(explain(
                e,
                "discover",
                "the populator.storage.k8s.io API",
                None,
            ));
        }
    }
    let binding_kind = kind_named("ClusterRoleBinding").resource();
    let bindings: Api<DynamicObject> = Api::all_with(client.clone(), &binding_kind);
    if let Some(b) = bindings
        .get_opt(POPULATOR_NAME)
        .await
        .map_err(|e| explain_for::<DynamicObject>(e, "get", &binding_kind, None))?
        && let Some(other) = bound_namespace(&b)
        && other != ns
    {
        bail!(
            "volbackup is already installed in namespace {other:?}: run `kubectl volbackup uninstall -n {other}` first, or install with -n {other}"
        );
    }
    let namespaces: Api<DynamicObject> =
        Api::all_with(client.clone(), &kind_named("Namespace").resource());
    let existing_ns = namespaces
        .get_opt(ns)
        .await
        .map_err(|e| explain_for::<Namespace>(e, "get", &(), None))?;
    if existing_ns
        .as_ref()
        .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
    {
        bail!("namespace {ns:?} is being deleted: wait until it is gone, then install again");
    }
    let foreign_ns = existing_ns.as_ref().is_some_and(|n| !ours(&n.metadata));

    let params = PatchParams::apply(MANAGER).force();
    for o in objs {
        if o.kind.kind == "Namespace" && foreign_ns {
            println!("namespace/{ns} exists (not created by volbackup), left as it is");
            continue;
        }
        let api = o.api(client);
        let what = o.kind.qualified_plural();
        let place = o.namespace.as_deref();
        let before = api
            .get_opt(&o.name)
            .await
            .map_err(|e| explain(e, "get", &what, place))?;
        let body: DynamicObject = serde_json::from_value(serde_json::to_value(&o.body)?)
            .with_context(|| format!("embedded manifest {} is not an object", o.display()))?;
        let verb = if before.is_some() { "patch" } else { "create" };
        let after = api
            .patch(&o.name, &params, &Patch::Apply(&body))
            .await
            .map_err(|e| explain(e, verb, &what, place))?;
        println!(
            "{} {}",
            o.display(),
            outcome(
                before
                    .as_ref()
                    .and_then(|b| b.metadata.resource_version.as_deref()),
                after.metadata.resource_version.as_deref()
            )
        );
        if o.kind.kind == "CustomResourceDefinition" {
            wait_established(client, &o.name).await?;
        }
    }
    if !quiet && std::io::stderr().is_terminal() {
        eprintln!("waiting for the populator Deployment {ns}/{POPULATOR_NAME} to be available...");
    }
    wait_available(client, ns).await
}

pub(super) fn missing_validator_crd() -> String {
    format!(
        "the cluster has no VolumePopulator API (populator.storage.k8s.io/v1beta1): install the volume-data-source-validator CRD first (`kubectl apply -f {VALIDATOR_CRD_URL}`), then run install again"
    )
}
