/** OHIF configuration: Orthanc's DICOMweb on this origin (cxr-triage). */

function pinImageLevelFinding({ measurement, SeriesInstanceUID }) {
  // Labels every triage measurement with its coded findings and comments; a group without a
  // SCOORD (an image-level finding) is also pinned near the corner of the image it refers to.
  try {
    if (!measurement || !window.services) {
      return measurement;
    }
    const located = measurement.coords && measurement.coords.length;
    const seq = s => (s == null ? [] : Array.isArray(s) ? s : [s]);
    const code = s => seq(s)[0] || {};
    const dss = window.services.displaySetService.getActiveDisplaySets();
    const sr = dss.find(ds => ds.SeriesInstanceUID === SeriesInstanceUID && ds.instance && ds.instance.ContentSequence);
    if (!sr) return measurement;
    const items = [];
    const walk = list => seq(list).forEach(it => { items.push(it); walk(it.ContentSequence); });
    let group = null;
    const findGroup = list => seq(list).forEach(it => {
      if (group) return;
      const inner = seq(it.ContentSequence);
      if (inner.some(c => c.ValueType === 'UIDREF' && c.UID === measurement.TrackingUniqueIdentifier)) group = it;
      else findGroup(inner);
    });
    findGroup(sr.instance.ContentSequence);
    if (!group) return measurement;
    const inGroup = seq(group.ContentSequence);
    const skip = ['121071', '111001', '121058', '112039', '112040'];
    const labels = [];
    inGroup.filter(c => c.ValueType === 'CODE' && !skip.includes(code(c.ConceptNameCodeSequence).CodeValue))
      .forEach(c => labels.push({ label: code(c.ConceptNameCodeSequence).CodeMeaning,
                                  value: code(c.ConceptCodeSequence).CodeMeaning }));
    (measurement.labels || []).forEach(l => labels.push({ label: l.label, value: String(l.value).replace(/ 1$/, '').trim() }));
    walk(sr.instance.ContentSequence);
    items.filter(c => c.ValueType === 'TEXT' && code(c.ConceptNameCodeSequence).CodeValue === '121106')
      .map(c => String(c.TextValue || '').match(/^([^:]{1,40}): (.{1,80})$/)).filter(Boolean)
      .forEach(m => labels.push({ label: m[1], value: m[2] }));
    measurement.labels = labels;
    if (located) return measurement;
    const source = inGroup.find(c => c.ValueType === 'IMAGE' && code(c.ConceptNameCodeSequence).CodeValue === '121112');
    const ref = source && code(source.ReferencedSOPSequence);
    if (!ref || !ref.ReferencedSOPInstanceUID) return measurement;
    let rows = 0, cols = 0;
    dss.forEach(ds => seq(ds.instances).forEach(i => {
      if (i.SOPInstanceUID === ref.ReferencedSOPInstanceUID) { rows = i.Rows; cols = i.Columns; }
    }));
    measurement.coords = [{
      ValueType: 'SCOORD', GraphicType: 'POINT',
      GraphicData: [Math.max(1, Math.round((cols || 100) * 0.06)), Math.max(1, Math.round((rows || 100) * 0.06))],
      ReferencedSOPSequence: { ReferencedSOPClassUID: ref.ReferencedSOPClassUID,
                               ReferencedSOPInstanceUID: ref.ReferencedSOPInstanceUID },
    }];
    measurement.graphicType = 'POINT';
    measurement.pointsLength = 1;
  } catch (err) {
    console.warn('pinImageLevelFinding', err);
  }
  return measurement;
}

window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {
    // No onboarding tour over the first study a reader opens.
    'ohif.tours': { $set: [] },
    // TID 1500 triage findings: labelled with their coded findings; image-level ones pinned to their image.
    onBeforeSRAddMeasurement: { $set: pinImageLevelFinding },
  },
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  investigationalUseDialog: { option: 'never' },
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: "Orthanc",
        name: 'orthanc',
        wadoUriRoot: window.location.origin + "/dicom-web",
        qidoRoot: window.location.origin + "/dicom-web",
        wadoRoot: window.location.origin + "/dicom-web",
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
